"""The compose stack, brought up for real without Docker by scripts/stack.sh: PostgreSQL from
Debian's packages, `mlflow server` on it serving artifacts, a Ray head and a worker node on this
machine. A small `harness.search` on `synthetic` runs against it; its runs must be in PostgreSQL
(read back with SQLAlchemy) and nest as parent and children (read back with MlflowClient over
HTTP); then `stack.sh down` must leave no process of the stack behind.

Needs PostgreSQL's server binaries and psycopg: skipped without them, unless HARNESS_REQUIRE_STACK=1
(scripts/ci_stack.sh sets it after installing both), where their absence fails.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "scripts" / "stack.sh"
SEARCH_TRIALS = 2


def _missing() -> str | None:
    if not (glob.glob("/usr/lib/postgresql/*/bin/initdb") or os.environ.get("PG_BIN") or shutil.which("initdb")):
        return "PostgreSQL server binaries not installed (apt-get install -y --no-install-recommends postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed (pip install 'psycopg[binary]')"
    if not shutil.which("setsid"):
        return "setsid (util-linux) not found"
    return None


def _read_state(folder: Path) -> dict[str, str]:
    path = folder / "stack.env"
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _process_table() -> list[tuple[int, int, int]]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True, check=True).stdout
    return [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]


def stack_processes(state: dict[str, str]) -> set[int]:
    """Every live process of the stack: the recorded PIDs, their descendants and process groups."""
    roots = {int(state[k]) for k in ("PG_PID", "MLFLOW_PID", "RAY_HEAD_PID", "RAY_WORKER_PID") if state.get(k)}
    table = _process_table()
    found = {pid for pid, _, pgid in table if pid in roots or pgid in roots}
    grew = True
    while grew:
        children = {pid for pid, ppid, _ in table if ppid in found} - found
        found |= children
        grew = bool(children)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The PIDs still running; a zombie (exited, not yet reaped by its parent) counts as stopped."""
    alive = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            alive.add(pid)
    return alive


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
    except OSError:
        return "(gone)"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    missing = _missing()
    if missing:
        if os.environ.get("HARNESS_REQUIRE_STACK") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    folder = tmp_path_factory.mktemp("stack")
    env = {**os.environ, "STACK_DIR": str(folder), "RAY_AUTH_MODE": "disabled",
           "PYTHON_BIN": str(Path(sys.executable).parent)}
    started = time.monotonic()
    try:
        up = subprocess.run(["bash", str(STACK), "up"], env=env, capture_output=True, text=True, timeout=420)
        failure = None if up.returncode == 0 else up.stderr[-4000:]
    except subprocess.TimeoutExpired as err:
        failure = f"timed out after {err.timeout} s: {str(err.stderr or '')[-4000:]}"
    state = _read_state(folder)
    seen: set[int] = stack_processes(state) if state else set()
    try:
        assert failure is None, f"stack.sh up failed:\n{failure}"
        assert state, "stack.sh up wrote no state"
        yield {"folder": folder, "env": env, "state": state, "up_seconds": time.monotonic() - started,
               "processes": seen}
    finally:
        if (folder / "stack.env").exists():  # the last test did not get to stop it
            seen |= stack_processes(state)
            subprocess.run(["bash", str(STACK), "down"], env=env, capture_output=True, text=True, timeout=180)
        for pid in _alive(seen):  # never leave a process behind, even when `down` is broken
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def search(stack):
    state = stack["state"]
    work = stack["folder"] / "search-cwd"
    work.mkdir()
    stack["processes"] |= stack_processes(state)
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "harness.search", "--dataset", "synthetic",
         "--address", state["RAY_ADDRESS"], "--tracking-uri", state["MLFLOW_TRACKING_URI"],
         "--num-samples", str(SEARCH_TRIALS), "--epochs", "1", "--final-seeds", "1", "--cpus-per-trial", "1",
         "--experiment", "stack-test", "--storage", str(work / "search"), "--json"],
        cwd=work, env={**stack["env"], "MLFLOW_TRACKING_URI": ""}, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, f"harness.search failed:\n{out.stderr[-4000:]}"
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return {"summary": summary, "seconds": time.monotonic() - started}


def _get(url: str, host: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_stack_is_up(stack):
    import sqlalchemy as sa
    from ray._raylet import GcsClient

    state = stack["state"]
    engine = sa.create_engine(state["PG_URI"])
    with engine.connect() as conn:
        assert "PostgreSQL" in conn.execute(sa.text("select version()")).scalar()
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert {"experiments", "runs", "metrics", "params", "tags"} <= tables, "MLflow's schema is not in PostgreSQL"
    nodes = GcsClient(address=state["RAY_ADDRESS"]).get_all_node_info(timeout=10)
    assert sum(1 for n in nodes.values() if n.state == 0) == 2, "expected a head and a worker node alive"
    # The Host headers docker-compose.yml allows: the Ray nodes' `mlflow:5000` works, a foreign one not.
    api = state["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(api) == 200
    assert _get(api, host="mlflow:5000") == 200
    assert _get(api, host="attacker.example:5000") == 403


def test_search_is_tracked_in_postgres(stack, search):
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    state, summary = stack["state"], search["summary"]
    client = MlflowClient(state["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("stack-test")
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=100)}
    parent = runs[summary["parent_run_id"]]
    assert parent.data.tags["kind"] == "search" and parent.info.status == "FINISHED"
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = [r for r in children if r.data.tags.get("kind") == "trial"]
    finals = [r for r in children if r.data.tags.get("kind") == "final"]
    assert len(trials) == SEARCH_TRIALS and len(finals) == 1
    assert all(r.info.status == "FINISHED" for r in children)
    for trial in trials:
        assert {"lambda", "lr", "num_attributes", "model"} <= set(trial.data.params)
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "val_H")], "no per-epoch val_H"
    assert "test_H" in finals[0].data.metrics
    # Trials ran on both Ray nodes (1 CPU each, 1 CPU per trial, started together).
    assert len({r.data.tags["ray_node"] for r in trials}) == 2, [r.data.tags.get("ray_node") for r in trials]

    # The same runs, read straight from PostgreSQL: the server's store is the database.
    engine = sa.create_engine(state["PG_URI"])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select r.run_uuid, r.status, r.artifact_uri from runs r join experiments e "
                    "on r.experiment_id = e.experiment_id where e.name = 'stack-test'")).all()
        nested = conn.execute(
            sa.text("select count(*) from tags where key = 'mlflow.parentRunId' and value = :p"),
            {"p": parent.info.run_id}).scalar()
        val_h = conn.execute(
            sa.text("select count(*) from metrics where key = 'val_H' and run_uuid = any(:ids)"),
            {"ids": [r.info.run_id for r in trials]}).scalar()
    engine.dispose()
    assert {row.run_uuid for row in rows} == set(runs)
    assert all(row.status == "FINISHED" for row in rows)
    assert nested == len(children) and val_h >= SEARCH_TRIALS

    # Artifacts went over HTTP to the server, which stored them under --artifacts-destination.
    final = finals[0]
    assert final.info.artifact_uri.startswith("mlflow-artifacts:")
    names = {a.path for a in client.list_artifacts(final.info.run_id)}
    assert "resolved_config.json" in names
    on_disk = stack["folder"] / "artifacts" / exp.experiment_id / final.info.run_id / "artifacts"
    assert (on_disk / "resolved_config.json").is_file()
    print(f"\nstack up {stack['up_seconds']:.1f} s, search {search['seconds']:.1f} s")


@pytest.mark.parametrize("trials, at_once", [(24, 8), pytest.param(100, 16, marks=pytest.mark.load)])
def test_many_trials_at_once_on_the_postgres_backed_server(stack, trials, at_once):
    """Load (issue 16): short trials, many at once on the two Ray nodes, every one logged to the
    PostgreSQL-backed `mlflow server`: nothing lost, every pass logged once, nothing RUNNING.
    24 trials 8 at once in CI; 100 trials 16 at once with `-m "stack and load"` (outside CI)."""
    from faults import check_every_trial

    state = stack["state"]
    work = stack["folder"] / f"load-cwd-{trials}"
    work.mkdir()
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "harness.search", "--dataset", "synthetic", "--model", "dazle",
         "--address", state["RAY_ADDRESS"], "--tracking-uri", state["MLFLOW_TRACKING_URI"],
         "--num-samples", str(trials), "--max-concurrent", str(at_once), "--cpus-per-trial", str(2 / at_once),
         "--epochs", "3", "--final-seeds", "0", "--experiment", f"stack-load-{trials}",
         "--storage", str(work / "search")],
        cwd=work, env={**stack["env"], "MLFLOW_TRACKING_URI": ""}, capture_output=True, text=True, timeout=1800,
    )
    stack["processes"] |= stack_processes(state)
    assert out.returncode == 0, f"harness.search failed:\n{out.stderr[-4000:]}"
    counts = check_every_trial(work / "search", state["MLFLOW_TRACKING_URI"], trials)
    print(f"\nload on the server: {trials} trials, {at_once} at once, {time.monotonic() - started:.1f} s, {counts}")


def test_down_stops_everything(stack):
    state, folder = stack["state"], stack["folder"]
    before = stack["processes"] | stack_processes(state)
    assert _alive(before), "the stack's processes were not found"
    started = time.monotonic()
    down = subprocess.run(["bash", str(STACK), "down"], env=stack["env"], capture_output=True, text=True,
                          timeout=180)
    seconds = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    left = {pid: _cmdline(pid) for pid in _alive(before)}
    assert not left, f"stack.sh down left processes running: {left}"
    assert not (folder / "stack.env").exists()
    assert not Path(state["RAY_TMP"]).exists() and not Path(state["PG_DIR"]).exists()
    print(f"\nstack down {seconds:.1f} s")


def test_stack_sh_refuses_bad_input_cleanly(tmp_path):
    """Missing PostgreSQL: one line naming it, exit 2, nothing written; `down` without a stack is a no-op."""
    env = {**os.environ, "STACK_DIR": str(tmp_path / "s"), "PG_BIN": str(tmp_path / "no-such-bin")}
    out = subprocess.run(["bash", str(STACK), "up"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "PostgreSQL not found" in out.stderr and "PG_BIN" in out.stderr
    assert not (tmp_path / "s").exists()
    down = subprocess.run(["bash", str(STACK), "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "nothing to stop" in down.stderr
    usage = subprocess.run(["bash", str(STACK), "restart"], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr
