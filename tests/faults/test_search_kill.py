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

import pytest

from faults import (
    Spawned,
    check_search_records,
    kill_pids,
    mlflow_records,
    ray_trials,
    run_cli,
    searcher_trials,
    trial_runs,
    try_mlflow_records,
    wait_until,
)

pytestmark = pytest.mark.slow
SEARCH = "harness.search"
NUM_SAMPLES = 4
SEARCH_ARGS = ["--dataset", "synthetic", "--model", "dazle", "--num-samples", str(NUM_SAMPLES), "--epochs", "3",
               "--final-seeds", "0", "--max-concurrent", "2", "--cpus-per-trial", "1", "--seed", "0"]


def test_search_driver_killed_then_resumed_loses_and_duplicates_nothing(tmp_path, fault_log):
    storage = tmp_path / "search"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # 1. Kill the driver once a trial has finished and another is running.
    first = Spawned(SEARCH, *SEARCH_ARGS, "--storage", storage, "--tracking-uri", uri, cwd=tmp_path, name="search1")
    try:
        def part_way():
            runs = trial_runs(try_mlflow_records(uri))
            done = [r for r in runs if r.status == "FINISHED"]
            return runs if done and len(runs) > len(done) else None

        wait_until(part_way, 420, "one trial finished and one running", interval=0.5, spawned=first)
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
    fault_log(fault="search driver SIGKILL, then --resume", injected=1, recovered=1,
              before={"ray_trials": len(before_ray), "optuna_trials": len(before_opt),
                      "mlflow_finished": len(finished_before), "mlflow_running": len(running_before)},
              after=counts, lost=0, duplicated=0, left_running=0)
