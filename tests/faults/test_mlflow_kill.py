"""Fault: the MLflow tracking server (a real `mlflow server` on 127.0.0.1) killed during a search.

What the harness does (docs/reliability.md):
- A short outage costs nothing: MLflow's client retries every call with exponential backoff
  (the harness sets MLFLOW_HTTP_REQUEST_MAX_RETRIES=4 unless set: about 30 s), so a server
  restarted within that window receives the delayed call and the run continues
  (test_short_outage_is_ridden_out_by_client_retries).
- A long outage fails the trial that could not log, Ray retries it, and when tracking stays down
  the search stops with one line naming --tracking-uri and how to resume, no traceback; the search
  folder keeps every finished trial. MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 stands in for "longer than
  the retry window" so the test takes seconds, not minutes.
- After the server is back, `--resume` completes the search: no finished trial is lost or re-run,
  the interrupted trial's run is reopened and finished, nothing is left RUNNING.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from faults import (
    RunRecord,
    Spawned,
    check_search_records,
    cli_env,
    mlflow_records,
    ray_trials,
    run_cli,
    try_mlflow_records,
    wait_until,
)
from faults.conftest import MlflowServer

pytestmark = pytest.mark.slow
SEARCH = "harness.search"
NUM_SAMPLES = 3


def test_short_outage_is_ridden_out_by_client_retries(mlflow_server):
    """The server dies and comes back 3 s later: a metric logged meanwhile arrives, nothing is lost."""
    from harness import tracking

    uri = mlflow_server.url
    exp = tracking.experiment_id(uri, "blip")
    ref = tracking.start_run(uri, exp, "blip-run")
    tracking.log_metrics(ref, {"val_H": 0.25}, step=1)
    mlflow_server.kill()
    restarter = threading.Timer(3.0, mlflow_server.start)
    restarter.start()
    started = time.monotonic()
    try:
        tracking.log_metrics(ref, {"val_H": 0.5}, step=2)  # the server is down now: retried, then delivered
        tracking.end_run(ref)
    finally:
        restarter.join()
    waited = time.monotonic() - started
    assert waited >= 2.5, f"the call returned after {waited:.1f} s, before the server was back"
    history = ref.client.get_metric_history(ref.run_id, "val_H")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.25), (2, 0.5)]
    assert tracking.run_status(ref) == "FINISHED"


@dataclass
class Outage:
    folder: Path
    server: MlflowServer
    storage: Path
    code: int
    stderr: str
    stop_seconds: float  # from the kill to the driver's exit
    before: list[RunRecord]


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """A search whose tracking server is SIGKILLed once a trial has finished and another runs."""
    folder = tmp_path_factory.mktemp("outage")
    server = MlflowServer(folder / "server")
    server.folder.mkdir()
    server.start()
    storage = folder / "search"
    env = cli_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    search = Spawned(SEARCH, "--dataset", "synthetic", "--model", "dazle", "--num-samples", str(NUM_SAMPLES),
                     "--epochs", "10", "--final-seeds", "0", "--max-concurrent", "1", "--cpus-per-trial", "1",
                     "--seed", "0", "--storage", storage, "--tracking-uri", server.url, cwd=folder, env=env,
                     name="search")
    try:
        def part_way():
            runs = [r for r in try_mlflow_records(server.url) if r.kind == "trial"]
            done = [r for r in runs if r.status == "FINISHED"]
            return runs if done and len(runs) > len(done) else None

        wait_until(part_way, 420, "one trial finished and one running", interval=0.5, spawned=search)
        before = mlflow_records(server.url)
        server.kill()
        killed = time.monotonic()
        code = search.wait(400)
        stop_seconds = time.monotonic() - killed
    finally:
        search.cleanup()
    yield Outage(folder, server, storage, code, search.stderr(), stop_seconds, before)
    server.kill()


def test_long_outage_stops_the_search_with_one_clear_line(outage, fault_log):
    errors = [line for line in outage.stderr.splitlines()
              if line.strip() and not re.search(r"\d+%\||trial/s|search folder", line)]
    fault_log(fault="MLflow server SIGKILL during a search (outage outlasting client retries)", injected=1,
              search_exit=outage.code, seconds_to_stop=round(outage.stop_seconds, 1),
              stderr_lines=len(errors), last_line=errors[-1][:300] if errors else "")
    assert outage.code == 2, f"exit {outage.code}: expected 2 (the one-line error of the CLIs)"
    assert outage.stop_seconds < 300, f"the search took {outage.stop_seconds:.0f} s to give up"
    assert "Traceback" not in outage.stderr, "a traceback instead of one line:\n" + outage.stderr[-2500:]
    assert len(errors) == 1, "expected one error line:\n" + "\n".join(errors[-15:])
    line = errors[0]
    assert line.startswith("harness.search: error: "), line
    assert outage.server.url in line and "--resume" in line, line


def test_resume_after_the_server_is_back_completes_the_search(outage, fault_log):
    finished_before = {r.run_id: r for r in outage.before if r.kind == "trial" and r.status == "FINISHED"}
    assert finished_before
    outage.server.start()  # same port, same SQLite store
    resumed = run_cli(SEARCH, "--dataset", "synthetic", "--storage", outage.storage, "--resume",
                      cwd=outage.folder, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    counts = check_search_records(outage.storage, outage.server.url, NUM_SAMPLES)
    after = {r.run_id: r for r in mlflow_records(outage.server.url)}
    for run_id, before in finished_before.items():
        assert after[run_id].status == "FINISHED" and after[run_id].metrics == before.metrics, before.name
        assert after[run_id].tags.get("attempts") == before.tags.get("attempts"), f"{before.name} was re-run"
    interrupted = [r for r in outage.before if r.kind == "trial" and r.status == "RUNNING"]
    ray = ray_trials(outage.storage / "dazle")
    for r in interrupted:
        if r.trial_id in ray:  # resumed by Ray: its own run reopened and finished
            assert after[r.run_id].status == "FINISHED", (r.name, after[r.run_id].status)
    fault_log(fault="MLflow server SIGKILL, restart, --resume", injected=0, recovered=1, after=counts, lost=0,
              duplicated=0, left_running=0)
