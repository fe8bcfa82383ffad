"""Fault: the search driver SIGKILLed part-way, then `--resume` (issue 9).

Three kinds of records are counted before the kill and after the resume:
- Ray Tune's trials (the experiment state in the search folder),
- the searcher's trials (the Optuna study Ray saves beside it),
- MLflow's runs (parent, one child per trial).
Guarantees under test: a trial finished before the kill is neither lost nor re-run; the resumed
search ends with `num_samples` finished Ray trials, each matched by exactly one COMPLETE Optuna trial
with the same parameters and value and by exactly one FINISHED MLflow run; no record of any kind is
left RUNNING; a run the kill orphaned (a trial started after Ray's last snapshot) is ended KILLED
with the reason, not left RUNNING and not counted as a trial; no metric step is logged twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from faults import (
    Spawned,
    check_search_records,
    cli_env,
    kill_pids,
    mlflow_records,
    ray_trials,
    run_cli,
    searcher_trials,
    trial_workers,
    wait_until,
)

pytestmark = pytest.mark.slow
SEARCH = "harness.search"
NUM_SAMPLES = 4
SEARCH_ARGS = ["--dataset", "synthetic", "--model", "dazle", "--num-samples", str(NUM_SAMPLES), "--epochs", "3",
               "--final-seeds", "0", "--max-concurrent", "1", "--cpus-per-trial", "1", "--seed", "0"]


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _in_snapshot(experiment: Path, trial_id: str) -> bool:
    """Whether Ray's saved experiment state lists the trial."""
    return any(trial_id in p.read_text(errors="replace") for p in experiment.glob("experiment_state-*.json"))


def _query(db: Path, sql: str, *args) -> list[tuple]:
    """Read MLflow's SQLite store directly (milliseconds, where the client API takes ~100 ms)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.Error:  # tables not created yet, or locked by a writer
        return []


def _trial_rows(db: Path) -> list[tuple]:
    """(run id, status, Ray trial id, number of val_H values) of every trial run."""
    return _query(db, "SELECT r.run_uuid, r.status, t.value, (SELECT COUNT(*) FROM metrics m "
                      "WHERE m.run_uuid = r.run_uuid AND m.key = 'val_H') FROM runs r JOIN tags t "
                      "ON t.run_uuid = r.run_uuid AND t.key = 'ray_trial_id'")


def _steps(db: Path, run_id: str) -> int:
    rows = _query(db, "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key = 'val_H'", run_id)
    return int(rows[0][0]) if rows else 0


def test_search_driver_killed_then_resumed_loses_and_duplicates_nothing(tmp_path, fault_log):
    storage = tmp_path / "search"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # 1. Make Ray's snapshot lag MLflow, deterministically: once a trial has finished and the next
    #    one has started but not reported, freeze its worker (SIGSTOP) until Ray's experiment
    #    snapshot lists the trial; then freeze the driver and let the worker go on, so the trial
    #    logs its first epoch to MLflow while Ray can no longer record its checkpoint; then
    #    SIGKILL the driver. The resumed search meets a trial whose run is ahead of its checkpoint,
    #    the hard case for "nothing logged twice".
    #    No checkpoint-only reports here: the worker's clock runs on while it is frozen, so its first
    #    step after SIGCONT would send one, which waits for the frozen driver before the epoch is logged.
    first = Spawned(SEARCH, *SEARCH_ARGS, "--storage", storage, "--tracking-uri", uri, cwd=tmp_path, name="search1",
                    env=cli_env({"HARNESS_CHECKPOINT_INTERVAL_S": "100000"}))
    db = tmp_path / "mlflow.db"
    lagged = False
    try:
        def part_way():  # polled straight from the SQLite store: an epoch lasts well under a second
            runs = _trial_rows(db)
            fresh = [r for r in runs if r[1] == "RUNNING" and r[3] == 0]
            return fresh[0] if any(r[1] == "FINISHED" for r in runs) and fresh else None

        victim_run, _, victim_trial, _ = wait_until(part_way, 420, "one trial finished and the next started",
                                                    interval=0.02, spawned=first)
        workers = trial_workers(first)
        _signal(workers, signal.SIGSTOP)
        fresh = _steps(db, victim_run) == 0
        try:
            wait_until(lambda: _in_snapshot(storage / "dazle", victim_trial), 120, "Ray's snapshot of the trial")
            _signal([first.pid], signal.SIGSTOP)
            _signal(workers, signal.SIGCONT)
            lagged = fresh and bool(wait_until(lambda: _steps(db, victim_run), 120, "the trial's first report"))
        finally:
            _signal(workers, signal.SIGCONT)
        first.track()
        kill_pids([first.pid])  # the driver alone, as a crash or an OOM kill would
        assert first.proc.wait(10) == -9
    finally:
        first.cleanup()  # then the Ray processes it left behind, by PID

    before_runs = {r.run_id: r for r in mlflow_records(uri)}
    before_ray = ray_trials(storage / "dazle")
    before_opt = searcher_trials(storage / "dazle")
    finished_before = {r.run_id: r for r in before_runs.values() if r.kind == "trial" and r.status == "FINISHED"}
    running_before = [r for r in before_runs.values() if r.status == "RUNNING"]
    assert finished_before and running_before, "the kill did not land part-way"
    fault_log(fault="search driver SIGKILL (Ray's snapshot lagging MLflow)", injected=1, phase="at the kill",
              snapshot_lagged_mlflow=lagged, ray_trials=len(before_ray), optuna_trials=len(before_opt),
              mlflow_finished=len(finished_before), mlflow_running=len(running_before))

    # 2. Resume.
    resumed = run_cli(SEARCH, "--dataset", "synthetic", "--storage", storage, "--resume", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming" in resumed.stderr

    # 3. The three kinds of records agree, and nothing was lost or duplicated.
    counts = check_search_records(storage, uri, NUM_SAMPLES)
    after_runs = {r.run_id: r for r in mlflow_records(uri)}
    after_ray = ray_trials(storage / "dazle")
    for run_id, before in finished_before.items():
        after = after_runs.get(run_id)
        assert after is not None, f"finished run {before.name} was lost"
        assert after.status == "FINISHED" and after.tags.get("attempts") == before.tags.get("attempts"), \
            f"finished trial {before.name} was re-run: attempts {before.tags.get('attempts')} -> " \
            f"{after.tags.get('attempts')}"
        assert after.metrics == before.metrics and after.steps == before.steps, f"{before.name} changed"
    for tid, t in before_ray.items():
        if t.status == "TERMINATED":
            assert after_ray[tid].status == "TERMINATED" and after_ray[tid].val_H == t.val_H, tid
            assert after_ray[tid].iterations == t.iterations, f"finished Ray trial {tid} ran again"
    fault_log(fault="search driver SIGKILL, then --resume", injected=0, recovered=1, phase="after --resume",
              after=counts, lost=0, duplicated=0, left_running=0)
