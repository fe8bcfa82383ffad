"""Fault: the Ray worker process running a trial SIGKILLed mid-trial (issue 9).

Guarantee under test: Ray retries the trial within its failure budget (--max-failures, default
2) from its last checkpoint; the search finishes; the retry is visible in MLflow, as the same
child run reopened with `attempts` = 2 (the harness keys a trial's run by its Ray trial id), with
every epoch's validation metrics logged exactly once, and not silently merged into a clean run.
"""

from __future__ import annotations

import pytest

from faults import (
    Spawned,
    kill_pids,
    mlflow_records,
    ray_trials,
    searcher_trials,
    trial_workers,
    try_mlflow_records,
    wait_until,
)

pytestmark = pytest.mark.slow
SEARCH = "harness.search"
EPOCHS = 10  # a window of several epochs in which the worker is killed mid-trial


def test_trial_worker_killed_is_retried_and_the_retry_recorded(tmp_path, fault_log):
    storage = tmp_path / "search"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search = Spawned(SEARCH, "--dataset", "synthetic", "--model", "dazle", "--num-samples", "2", "--epochs",
                     str(EPOCHS), "--final-seeds", "0", "--max-concurrent", "1", "--cpus-per-trial", "1",
                     "--max-failures", "2", "--seed", "0", "--storage", storage, "--tracking-uri", uri,
                     cwd=tmp_path, name="search")
    try:
        # 1. Wait for a trial that has reported an epoch (so it has a checkpoint) and is still running.
        def reporting_trial():
            from mlflow.tracking import MlflowClient

            for run in try_mlflow_records(uri):
                if run.kind == "trial" and run.status == "RUNNING":
                    try:
                        history = MlflowClient(uri).get_metric_history(run.run_id, "val_H")
                    except Exception:  # noqa: BLE001 - store busy
                        continue
                    if 1 <= len(history) < EPOCHS:
                        return run
            return None

        victim = wait_until(reporting_trial, 420, "a trial mid-way", interval=0.3, spawned=search)
        workers = wait_until(lambda: trial_workers(search), 30, "the trial's Ray worker", spawned=search)
        assert len(workers) == 1, f"expected one trial worker (--max-concurrent 1), found {workers}"
        kill_pids(workers)  # 2. the worker only; the driver and Ray itself live on

        # 3. The search ends by itself, successfully.
        code = search.wait(480)
        assert code == 0, search.stderr()[-4000:]
    finally:
        search.cleanup()

    ray = ray_trials(storage / "dazle")
    assert ray[victim.trial_id].num_failures == 1, {t: r.num_failures for t, r in ray.items()}
    assert all(t.status == "TERMINATED" for t in ray.values()), {t: r.status for t, r in ray.items()}
    assert ray[victim.trial_id].iterations == EPOCHS

    runs = [r for r in mlflow_records(uri) if r.kind == "trial"]
    assert not [r for r in runs if r.status == "RUNNING"]
    mine = [r for r in runs if r.trial_id == victim.trial_id]
    # The harness reopens the trial's own run on a retry: one run, the retry counted in `attempts`.
    assert len(mine) == 1, [(r.name, r.status) for r in mine]
    run = mine[0]
    assert run.run_id == victim.run_id
    assert run.status == "FINISHED"
    assert run.tags.get("attempts") == "2", f"the retry is not recorded: attempts={run.tags.get('attempts')}"
    assert run.steps["val_H"] == list(range(1, EPOCHS + 1)), f"epochs logged {run.steps['val_H']}"
    others = [r for r in runs if r.trial_id != victim.trial_id]
    assert others and all(r.tags.get("attempts") == "1" and r.status == "FINISHED" for r in others)

    opt = searcher_trials(storage / "dazle")
    assert sorted(t.state for t in opt) == ["COMPLETE", "COMPLETE"], [(t.number, t.state) for t in opt]
    fault_log(fault="trial worker SIGKILL (Ray retry)", injected=1, recovered=1,
              ray_failures_of_trial=ray[victim.trial_id].num_failures, mlflow_attempts=run.tags.get("attempts"),
              mlflow_trial_runs=len(runs), lost=0, duplicated=0, left_running=0)
