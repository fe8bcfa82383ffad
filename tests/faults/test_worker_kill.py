"""Fault: the Ray worker process running a trial SIGKILLed (or SIGTERMed) mid-trial (issues 9, 16).

Guarantee under test: Ray retries the trial within its failure budget (--max-failures, default
2) from its last checkpoint, which holds the model, the optimiser, the sampler and the step; the
retry continues from that step (MLflow tag `resumed_from_step`) and ends with exactly the metrics
of the same trial fitted without interruption; the search finishes; the retry is visible in
MLflow, as the same child run reopened with `attempts` = 2 (the harness keys a trial's run by its
Ray trial id), with every epoch's validation metrics logged exactly once, and not silently merged
into a clean run. SIGTERM to the worker is the same: a retried failure, not a lost trial.
"""

from __future__ import annotations

import os
import signal

import pytest

from faults import (
    Spawned,
    alive,
    cli_env,
    kill_pids,
    metric_history,
    mlflow_records,
    ray_trials,
    searcher_trials,
    trial_workers,
    try_mlflow_records,
    uninterrupted_history,
    wait_until,
)

pytestmark = pytest.mark.slow
SEARCH = "harness.search"
EPOCHS = 10  # a window of several epochs in which the worker is killed mid-trial


CHECKPOINT_INTERVAL_S = "0.5"  # between the reports ASHA sees, so the kill lands after a recent checkpoint


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_trial_worker_killed_is_retried_and_the_retry_recorded(tmp_path, fault_log, sig):
    storage = tmp_path / "search"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search = Spawned(SEARCH, "--dataset", "synthetic", "--model", "dazle", "--num-samples", "2", "--epochs",
                     str(EPOCHS), "--final-seeds", "0", "--max-concurrent", "1", "--cpus-per-trial", "1",
                     "--max-failures", "2", "--seed", "0", "--storage", storage, "--tracking-uri", uri,
                     cwd=tmp_path, name="search", env=cli_env({"HARNESS_CHECKPOINT_INTERVAL_S": CHECKPOINT_INTERVAL_S}))
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
        if sig == signal.SIGKILL:
            kill_pids(workers)  # 2. the worker only; the driver and Ray itself live on
        else:
            os.kill(workers[0], sig)
            wait_until(lambda: not alive(workers[0]), 60, "the worker to exit on SIGTERM", spawned=search)

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

    # 4. The retry continued from its checkpoint, not from the start, and ended exactly where the
    #    same trial ends uninterrupted (same host, same thread count).
    resumed_from = int(run.tags.get("resumed_from_step", 0))
    assert resumed_from > 0, "the retried trial started over instead of continuing from its checkpoint"
    whole = uninterrupted_history(storage, ray[victim.trial_id].config)
    steps_per_epoch = int(whole[0]["step"])
    for key in ("val_H", "val_acc_seen", "val_acc_unseen", "loss"):
        logged = metric_history(uri, run.run_id, key)
        assert logged == [(int(h["epoch"]), h[key]) for h in whole], f"{key} differs from the uninterrupted trial"
    fault_log(fault=f"trial worker {sig.name} mid-trial (Ray retry from the checkpoint)", injected=1, recovered=1,
              ray_failures_of_trial=ray[victim.trial_id].num_failures, mlflow_attempts=run.tags.get("attempts"),
              mlflow_trial_runs=len(runs), optuna_trials=len(opt), ray_trials=len(ray),
              resumed_from_step=resumed_from, steps_per_trial=EPOCHS * steps_per_epoch,
              epochs_logged=len(run.steps["val_H"]), final_metrics_equal_uninterrupted=True,
              lost=0, duplicated=0, left_running=0)
