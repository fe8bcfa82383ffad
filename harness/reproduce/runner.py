"""Run a reproduction grid: every (configuration, seed) is one Ray task, logged as one MLflow child.

Ray tasks rather than Tune: the paper's settings are fixed, so there is nothing to schedule or
select, only independent fits to spread over the cores or nodes. Identical configurations that
several rows share (e.g. one stand-in dataset for CUB, SUN and AWA2) are fitted once.
Child runs are written by the driver as each task returns, so a SQLite store never sees two
writers and a cluster's workers need no route to the tracking server.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

from harness import tracking
from harness.cluster import init_ray
from harness.config import TrainConfig


@dataclass(frozen=True)
class Trial:
    """One fit the table needs: which row and setting it serves, and its full configuration."""

    table: str
    row: str
    setting: str  # "paper" (the published settings) or "tuned" (the best configuration of a search)
    config: TrainConfig


@dataclass
class Outcome:
    config: TrainConfig
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    run_id: str | None = None
    # Metrics recorded during training at a step of their own ({"step": n, name: value, ...}),
    # logged to the child run at that step (the protocol diagnostic's test curve).
    curve: list[dict[str, float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # plain data a task returns beside its metrics

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ClusterOptions:
    address: str | None = None  # None: a local Ray started for this command
    num_cpus: int | None = None  # local Ray only; None: every core
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


def fit_task(config_values: dict) -> dict:
    """Body of one Ray task: fit, and return plain data (no model, no tensors)."""
    from harness.trainer import fit

    started = time.perf_counter()
    config = TrainConfig(**config_values)
    try:
        result = fit(config)
    except Exception as err:  # a failed trial is reported in its row, the grid goes on
        message = " ".join(f"{type(err).__name__}: {err}".split())
        return {"error": message, "seconds": time.perf_counter() - started}
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    history = [{k: float(v) for k, v in h.items()} for h in result.history]
    return {"metrics": metrics, "history": history, "seconds": result.seconds}


def _placed(config: TrainConfig, cluster: ClusterOptions) -> TrainConfig:
    """Threads and device follow the resources a task is given."""
    threads = config.num_threads or max(1, int(cluster.cpus_per_trial))
    device = "cuda" if cluster.gpus_per_trial > 0 and config.device == "cpu" else config.device
    fraction = cluster.gpus_per_trial if 0 < cluster.gpus_per_trial < 1 else 1.0
    return replace(config, num_threads=threads, device=device, resident_fraction=fraction)


def start_ray(cluster: ClusterOptions) -> bool:
    """Connect to --address or start a local Ray; True when this call started it (and must stop it)."""
    return init_ray(cluster.address, cluster.num_cpus)


class GridTracker:
    """The MLflow parent run of one reproduction and its children."""

    def __init__(self, uri: str, experiment: str, name: str, params: dict, tags: dict) -> None:
        tracking.check_tracking(uri)
        self.uri = uri
        self.exp_id = tracking.experiment_id(uri, experiment)
        self.parent = tracking.start_run(uri, self.exp_id, name, params=params, tags=tags)

    def log_child(self, trials: Sequence[Trial], outcome: Outcome) -> str:
        config = outcome.config
        first = trials[0]
        row = f"row{first.row}" if first.row.isdigit() else first.row
        name = f"{first.table}/{row}/{first.setting}/seed{config.seed}"
        tags = {
            "reproduce.table": first.table,
            "reproduce.rows": ",".join(sorted({t.row for t in trials})),
            "reproduce.setting": ",".join(sorted({t.setting for t in trials})),
            "dataset": config.dataset,
            "model": config.model,
            "seed": config.seed,
        }
        if outcome.error:
            tags["error"] = outcome.error[:5000]
        ref = tracking.start_run(self.uri, self.exp_id, name, params=config.as_params(), tags=tags,
                                 parent=self.parent)
        for record in outcome.history:
            step = int(record.get("epoch", 0))
            tracking.log_metrics(ref, {k: v for k, v in record.items() if k not in ("epoch", "step")}, step=step)
        for record in outcome.curve:
            tracking.log_metrics(ref, {k: v for k, v in record.items() if k != "step"}, step=int(record["step"]))
        tracking.log_metrics(ref, {**outcome.metrics, "seconds": outcome.seconds})
        tracking.end_run(ref, "FINISHED" if outcome.ok else "FAILED")
        return ref.run_id

    def log_files(self, paths: Sequence[str]) -> None:
        for path in paths:
            tracking.log_artifact(self.parent, path)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        tracking.log_metrics(self.parent, metrics)

    def finish(self, status: str) -> None:
        tracking.end_run(self.parent, status)

    @contextlib.contextmanager
    def running(self) -> Iterator[GridTracker]:
        """Ends the parent run FINISHED after the block, KILLED on Ctrl-C, FAILED on any other error."""
        try:
            yield self
            self.finish("FINISHED")
        except KeyboardInterrupt:
            self.finish("KILLED")
            raise
        except BaseException:
            self.finish("FAILED")
            raise


def run_grid(
    trials: Sequence[Trial],
    cluster: ClusterOptions,
    tracker: GridTracker | None,
    progress: bool = True,
    task: Callable[[dict], dict] = fit_task,
) -> dict[TrainConfig, Outcome]:
    """Fit every distinct configuration once, in parallel on Ray.

    Outcomes are keyed by the trial's configuration; each outcome holds the configuration as it
    ran (threads and device set from the task's resources). `task` is the body of one Ray task:
    fit_task, or another function returning the same keys (plus optional "curve" and "extra").
    """
    import ray

    by_config: dict[TrainConfig, list[Trial]] = {}
    for trial in trials:
        by_config.setdefault(trial.config, []).append(trial)
    started_here = start_ray(cluster)
    remote = ray.remote(num_cpus=cluster.cpus_per_trial, num_gpus=cluster.gpus_per_trial, max_retries=0)(task)
    outcomes: dict[TrainConfig, Outcome] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(by_config), desc=f"{trials[0].table if trials else 'grid'} trials", unit="fit",
                   file=sys.stderr, dynamic_ncols=True)
    try:
        placed = {c: _placed(c, cluster) for c in by_config}
        pending = {remote.remote(asdict(placed[c])): c for c in by_config}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                config = pending.pop(ref)
                try:
                    raw = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died (OOM, node lost)
                    raw = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:2000]}
                outcome = Outcome(placed[config], raw.get("metrics", {}), raw.get("history", []),
                                  float(raw.get("seconds", 0.0)), raw.get("error"), curve=raw.get("curve", []),
                                  extra=raw.get("extra", {}))
                if tracker is not None:
                    outcome.run_id = tracker.log_child(by_config[config], outcome)
                outcomes[config] = outcome
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if started_here:
            ray.shutdown()
    return outcomes
