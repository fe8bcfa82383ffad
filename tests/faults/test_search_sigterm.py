"""Fault: SIGTERM to the search driver mid-search (preemption by Slurm or Kubernetes; issue 16).

Guarantees under test: the driver stops as Ctrl+C stops it, after a grace period in which the
running trial writes a last checkpoint (the test turns the periodic checkpoints off, so that
checkpoint can only come from the SIGTERM); it exits 143 (128 + SIGTERM) with one line naming
--resume; no MLflow run is left RUNNING (the interrupted trial's run and the parent are KILLED);
`--resume` continues the interrupted trial from that last checkpoint and completes the search
with nothing lost or duplicated in Ray's results, Optuna's trials and MLflow's runs, and the
interrupted trial ends with exactly the metrics of the same trial run without interruption.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from faults import (
    Spawned,
    check_search_records,
    cli_env,
    metric_history,
    mlflow_records,
    ray_trials,
    run_cli,
    searcher_trials,
    try_mlflow_records,
    uninterrupted_history,
    wait_until,
)

pytestmark = pytest.mark.slow
SEARCH = "harness.search"
NUM_SAMPLES, EPOCHS = 2, 200
ENV = {"HARNESS_SIGTERM_GRACE_S": "2", "HARNESS_CHECKPOINT_INTERVAL_S": "100000"}


def _registered_checkpoint(experiment, trial_id: str) -> dict:
    """trial_state.json of the checkpoint Ray's saved experiment state holds for the trial."""
    from ray.tune import ExperimentAnalysis

    trial = next(t for t in ExperimentAnalysis(str(experiment)).trials if t.trial_id == trial_id)
    return json.loads((Path(trial.checkpoint.path) / "trial_state.json").read_text()) if trial.checkpoint else {}


def _checkpoint_only_steps(trial_dir) -> list[int]:
    """Steps of the checkpoint-only reports the driver processed (periodic ones are off: SIGTERM's)."""
    lines = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    return [int(r["step"]) for r in lines if r.get("checkpoint_only")]


def test_sigterm_to_the_driver_stops_like_ctrl_c_and_the_search_resumes(tmp_path, fault_log):
    storage = tmp_path / "search"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--dataset", "synthetic", "--model", "dazle", "--num-samples", str(NUM_SAMPLES), "--epochs", str(EPOCHS),
            "--final-seeds", "0", "--max-concurrent", "1", "--cpus-per-trial", "1", "--seed", "0"]
    search = Spawned(SEARCH, *args, "--storage", storage, "--tracking-uri", uri, cwd=tmp_path, name="search",
                     env=cli_env(ENV))
    try:
        def mid_trial():
            from mlflow.tracking import MlflowClient

            for run in try_mlflow_records(uri):
                if run.kind == "trial" and run.status == "RUNNING":
                    try:
                        n = len(MlflowClient(uri).get_metric_history(run.run_id, "val_H"))
                    except Exception:  # noqa: BLE001 - store busy
                        continue
                    if 2 <= n < EPOCHS // 3:
                        return run
            return None

        victim = wait_until(mid_trial, 420, "a trial mid-way", interval=0.3, spawned=search)
        signalled = time.time()
        os.kill(search.pid, signal.SIGTERM)  # the driver only, as Kubernetes signals a pod's main process
        code = search.wait(180)
        stopped_s = time.time() - signalled
    finally:
        search.cleanup()

    assert code == 143, search.stderr()[-3000:]
    err = search.stderr()
    assert "SIGTERM" in err and "--resume" in err, err[-2000:]
    runs = mlflow_records(uri)
    assert not [r for r in runs if r.status == "RUNNING"], [(r.name, r.status) for r in runs]
    mine = next(r for r in runs if r.run_id == victim.run_id)
    assert mine.status == "KILLED", mine.status
    assert [r.status for r in runs if r.kind == "search"] == ["KILLED"]
    # In the grace period the trial wrote a checkpoint (periodic ones are off: it came from the SIGTERM),
    # and Ray's saved state holds it or a later one (a rung reached before the stop).
    term_steps = _checkpoint_only_steps(storage / "dazle" / f"trial_{victim.trial_id}")
    assert term_steps, "the interrupted trial wrote no checkpoint in the grace period"
    last = _registered_checkpoint(storage / "dazle", victim.trial_id)
    assert last and last["step"] >= term_steps[-1], (last, term_steps)
    ray_before = ray_trials(storage / "dazle")
    opt_before = searcher_trials(storage / "dazle")
    fault_log(fault="search driver SIGTERM", injected=1, phase="at the stop", exit_code=code,
              seconds_to_stop=round(stopped_s, 1), sigterm_checkpoint_step=term_steps[-1],
              registered_checkpoint_step=last["step"],
              ray_trials=len(ray_before), optuna_trials=len(opt_before), mlflow_trial_runs=len(runs) - 1,
              mlflow_running=0)

    resumed = run_cli(SEARCH, "--dataset", "synthetic", "--storage", storage, "--resume", cwd=tmp_path,
                      timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    counts = check_search_records(storage, uri, NUM_SAMPLES)
    after = {r.run_id: r for r in mlflow_records(uri)}[victim.run_id]
    assert after.status == "FINISHED"
    assert int(after.tags.get("resumed_from_step", -1)) == last["step"], "did not continue from the last checkpoint"
    whole = uninterrupted_history(storage, ray_trials(storage / "dazle")[victim.trial_id].config)
    for key in ("val_H", "loss"):
        assert metric_history(uri, victim.run_id, key) == [(int(h["epoch"]), h[key]) for h in whole], key
    fault_log(fault="search driver SIGTERM, then --resume", injected=0, recovered=1, phase="after --resume",
              after=counts, resumed_from_step=last["step"], final_metrics_equal_uninterrupted=True,
              lost=0, duplicated=0, left_running=0)
