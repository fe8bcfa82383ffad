"""Fault: a worker node of the cluster lost mid-search (preemption, a crashed host; issue 16).

A two-node Ray cluster on this machine (`ray start --head` + `ray start --address`, loopback, one
CPU each, private temp folder and port), one trial on each node. Once both trials have logged an
epoch, every process of the worker node (its `ray start`, raylet, agents and trial workers) is
SIGKILLed by PID. Guarantees under test: the lost node's trial is rescheduled on the head within
--max-failures and continues from its checkpoint (MLflow tag `resumed_from_step`), ending with
exactly the metrics of the same trial run without interruption; the search finishes; nothing is
lost or duplicated in Ray's results, Optuna's trials and MLflow's runs; nothing is left RUNNING.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from faults import (
    PYTHON,
    Spawned,
    check_search_records,
    cli_env,
    family,
    kill_pids,
    metric_history,
    mlflow_records,
    ray_trials,
    searcher_trials,
    try_mlflow_records,
    uninterrupted_history,
    wait_until,
)
from faults.conftest import free_port

# A minute or more: outside CI's time budget, run with pytest -m long (docs/reliability.md).
pytestmark = [pytest.mark.slow, pytest.mark.long]
SEARCH = "harness.search"
NUM_SAMPLES, EPOCHS = 2, 60
# The head's GCS declares a silent node dead after 3 missed 1 s health checks (Ray's default: ~30 s).
HEAD_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
            "RAY_health_check_timeout_ms": "1000"}


class TwoNodeCluster:
    """Head + one worker node, each `ray start --block` in its own session; stopped by PID only."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rel-ray-", dir="/tmp"))  # Ray's socket paths must stay short
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, set[int]] = {"head": set(), "worker": set()}

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        ray = str(Path(PYTHON).parent / "ray")
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - kept open for the node's life
        self.procs[name] = subprocess.Popen([ray, "start", *args, "--num-cpus=1", "--disable-usage-stats",
                                             "--node-ip-address=127.0.0.1", "--block"], stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until(lambda: "Ray runtime started" in (self.root / f"{name}.log").read_text(), 180,
                   f"the Ray {name} node")
        self.track()

    def start(self) -> None:
        self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                             f"--temp-dir={self.root / 'ray'}"], cli_env(HEAD_ENV))
        self._start("worker", [f"--address={self.address}"], cli_env())

    def track(self) -> None:
        for name, proc in self.procs.items():
            self.pids[name] |= family(proc.pid)

    def kill(self, name: str) -> list[int]:
        self.track()
        pids = sorted(self.pids[name])
        kill_pids(pids)
        self.procs[name].wait(10)
        return pids

    def stop(self) -> None:
        for name in ("worker", "head"):
            if name in self.procs:
                self.kill(name)
        shutil.rmtree(self.root, ignore_errors=True)


def test_a_lost_worker_node_costs_nothing(tmp_path, fault_log):
    cluster = TwoNodeCluster()
    storage = tmp_path / "search"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        cluster.start()
        search = Spawned(SEARCH, "--dataset", "synthetic", "--model", "dazle", "--num-samples", str(NUM_SAMPLES),
                         "--epochs", str(EPOCHS), "--final-seeds", "0", "--max-concurrent", "2", "--cpus-per-trial",
                         "1", "--max-failures", "2", "--seed", "0", "--address", cluster.address, "--storage",
                         storage, "--tracking-uri", uri, cwd=tmp_path, name="search",
                         env=cli_env({"HARNESS_CHECKPOINT_INTERVAL_S": "0.5"}))
        try:
            def both_mid_way():
                from mlflow.tracking import MlflowClient

                if not (storage / "search.json").exists():  # the driver creates the store first
                    return None
                running = [r for r in try_mlflow_records(uri) if r.kind == "trial" and r.status == "RUNNING"]
                try:
                    counts = [len(MlflowClient(uri).get_metric_history(r.run_id, "val_H")) for r in running]
                except Exception:  # noqa: BLE001 - store busy
                    return None
                return running if len(running) == 2 and all(1 <= n < EPOCHS // 3 for n in counts) else None

            running = wait_until(both_mid_way, 480, "a trial mid-way on each node", interval=0.3, spawned=search)
            before = {r.trial_id: r for r in running}
            killed = cluster.kill("worker")  # 2. the whole worker node, by PID
            lost_at = time.monotonic()
            code = search.wait(600)
            assert code == 0, search.stderr()[-4000:]
            recovery_s = time.monotonic() - lost_at
        finally:
            search.cleanup()
    finally:
        cluster.stop()

    counts = check_search_records(storage, uri, NUM_SAMPLES)  # nothing lost, duplicated or RUNNING
    ray = ray_trials(storage / "dazle")
    retried = [t for t in ray.values() if t.num_failures]
    assert len(retried) == 1 and retried[0].trial_id in before, {t: r.num_failures for t, r in ray.items()}
    victim = retried[0]
    run = next(r for r in mlflow_records(uri) if r.trial_id == victim.trial_id)
    assert run.run_id == before[victim.trial_id].run_id and run.tags.get("attempts") == "2"
    resumed_from = int(run.tags.get("resumed_from_step", 0))
    assert resumed_from > 0, "the rescheduled trial started over instead of continuing from its checkpoint"
    assert run.steps["val_H"] == list(range(1, EPOCHS + 1))
    whole = uninterrupted_history(storage, victim.config)
    for key in ("val_H", "loss"):
        assert metric_history(uri, run.run_id, key) == [(int(h["epoch"]), h[key]) for h in whole], key
    opt = searcher_trials(storage / "dazle")
    fault_log(fault="worker node lost (every process of the node SIGKILLed)", injected=1, recovered=1,
              processes_killed=len(killed), trials_on_lost_node=1, recovery_seconds=round(recovery_s, 1),
              before={"ray_trials_running": len(before)}, after=counts, optuna_trials=len(opt),
              resumed_from_step=resumed_from, steps_per_trial=EPOCHS * int(whole[0]["step"]),
              final_metrics_equal_uninterrupted=True, lost=0, duplicated=0, left_running=0)
