"""One search trial, as it runs inside a Ray worker on any node of the cluster.

The trial
1. checks that its dataset (and feature cache) is readable on this node, and fails with a clear
   message naming the node if not;
2. seals the dataset: it keeps only the search view's images (train classes plus validation
   classes, never a test index), so nothing the trial runs can read a test image;
3. opens (or, when Ray retries or a search resumes it, reopens) its own MLflow child run, keyed by
   the Ray trial id, and logs parameters, tags and per-epoch validation metrics;
4. calls harness.trainer.fit(stage="search"), logs every validation pass to MLflow and reports to
   Ray Tune the passes at which ASHA decides (its rungs, `report_passes`) and the last one, each
   report carrying the pass count as `pass`, ASHA's time attribute; a report takes a checkpoint
   at most every `checkpoint_interval_s` seconds, so a restored trial knows where it was.

Resuming a trial replays training deterministically from the start (fit is seeded) and reports
only the passes after its checkpoint; fit() has no hook to load a model mid-run yet. The
checkpoint holds only the pass count, so a sparser one costs a restored trial nothing but a few
passes reported to Tune again (MLflow never logs a step twice, see `report`). Per-pass metrics
reach MLflow in one batch at most every `metrics_interval_s` seconds, and always before a
checkpoint and at the run's end. Every Tune report is a round trip to the driver; on short
trials, a report, a checkpoint and an MLflow write on every pass cost two concurrent trials
about a third of their throughput (bench/search.py, docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness import tracking
from harness.config import TrainConfig
from harness.data.base import GZSLDataset, RestrictedFeatures, SplitLeakError
from harness.data.splits import ProtocolView, search_view
from harness.search.space import same_point, trial_config
from harness.trainer import DivergenceError, fit, resolve_dataset

REPORTED_METRICS = ("val_acc_seen", "val_acc_unseen", "val_H", "val_zsl_top1", "val_ausuc", "loss")
# Constant for a dataset: a tag, not a metric to chart.
CONSTANT_METRICS = ("attention_chance",)
STATE_FILE = "trial_state.json"
PASS = "pass"  # the validation passes a trial has run, in every Tune report: ASHA's time attribute


class FeatureCacheError(RuntimeError):
    """The dataset or its feature cache cannot be read on the node a trial landed on."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one search shares; plain data, shipped to every worker."""

    base: dict[str, Any]  # TrainConfig fields fixed for the search (dataset, model, epochs, seed, ...)
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    git_commit: str
    paper_point: dict[str, Any] = field(default_factory=dict)
    search_name: str = ""
    checkpoint_interval_s: float = 10.0  # seconds between a trial's checkpoints (0: on every report)
    # Passes reported to Tune besides the last (ASHA's rungs; the plan fills it in); None: every pass.
    report_passes: tuple[int, ...] | None = None
    metrics_interval_s: float = 2.0  # seconds between a trial's MLflow metric batches (0: every pass)
    searched: tuple[str, ...] = ()  # the searched TrainConfig fields: MLflow params of every trial


def trial_run_name(trial_name: str, trial_id: str, paper: bool) -> str:
    """`trial-007` (Tune's trial name, the order the searcher proposed it), `trial-000-paper` for the
    paper's configuration; the name survives --resume because Tune stores it with the trial."""
    name = trial_name if re.fullmatch(r"trial-\d+", trial_name or "") else f"trial-{trial_id}"
    return f"{name}-paper" if paper else name


# ---------------------------------------------------------------- data on this node

_DATASETS: dict[tuple, tuple[GZSLDataset, np.ndarray]] = {}


def node_name() -> str:
    """Host name plus Ray node id (two Ray nodes can share a host)."""
    import ray

    # ray.get_runtime_context() would start a local Ray instance when none is connected.
    node = ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else "no-ray"
    return f"{socket.gethostname()}/{node}"


def load_on_node(config: TrainConfig) -> GZSLDataset:
    """The dataset with one feature record read, or FeatureCacheError naming this node."""
    try:
        dataset = resolve_dataset(config)
        dataset.features.read(np.asarray(dataset.trainval_loc[:1]))
    except Exception as err:
        raise FeatureCacheError(
            f"dataset {config.dataset!r}: data or feature cache not readable on node {node_name()} "
            f"(cache_dir={config.cache_dir!r}, data_root={config.data_root!r}): {type(err).__name__}: {err}"
        ) from err
    return dataset


def _seal_annotations(annotations: dict, inside: np.ndarray) -> dict:
    """Per-image annotations (one row per image) keep only trainval rows; others are blanked."""
    out = {}
    for key, value in annotations.items():
        if isinstance(value, np.ndarray) and value.ndim and len(value) == len(inside):
            blank = False if value.dtype == bool else (-1 if np.issubdtype(value.dtype, np.integer) else np.nan)
            value = np.where(inside.reshape(-1, *([1] * (value.ndim - 1))), value, blank).astype(value.dtype)
        out[key] = value
    return out


def sealed_dataset(dataset: GZSLDataset) -> GZSLDataset:
    """The dataset as a search trial may see it: seen classes and trainval images only.

    Test locations are emptied, every image outside trainval has label -1 (and blank per-image
    annotations), the test-unseen classes are gone (their names and attribute rows; the seen
    classes are renumbered 0..S-1 in order, so the search view is the same), and the feature
    source refuses (SplitLeakError) every image outside the search view, so code that asks for a
    test image fails instead of reading it. A search's unseen classes are the validation classes.
    """
    view = search_view(dataset)
    seen = np.sort(dataset.seen_classes)
    renumber = np.full(dataset.num_classes, -1, dtype=np.int64)
    renumber[seen] = np.arange(len(seen))
    inside = np.zeros(len(dataset.labels), dtype=bool)
    inside[dataset.trainval_loc] = True
    empty = np.zeros(0, dtype=np.int64)
    return replace(
        dataset,
        labels=np.where(inside, renumber[dataset.labels], -1),
        class_names=[dataset.class_names[c] for c in seen],
        class_attributes=dataset.class_attributes[seen],
        val_classes=renumber[dataset.val_classes],
        features=RestrictedFeatures(dataset.features, view.all_indices()),
        test_seen_loc=empty,
        test_unseen_loc=empty,
        annotations=_seal_annotations(dataset.annotations, inside),
    )


def forbidden_indices(dataset: GZSLDataset) -> np.ndarray:
    return np.union1d(dataset.test_seen_loc, dataset.test_unseen_loc)


def check_sealed(view: ProtocolView, forbidden: np.ndarray) -> None:
    """Raise SplitLeakError if a view a trial used holds any of the `forbidden` (test) images."""
    leaked = np.intersect1d(view.all_indices(), forbidden)
    if leaked.size:
        raise SplitLeakError(f"search view holds {leaked.size} test images, e.g. {leaked[:5].tolist()}")


def trial_dataset(config: TrainConfig) -> tuple[GZSLDataset, np.ndarray]:
    """(sealed dataset, the original test indices) for this node, cached per worker process."""
    key = (config.dataset, config.data_root, config.cache_dir, config.word_vectors, config.data_seed)
    if key not in _DATASETS:
        dataset = load_on_node(config)
        _DATASETS.clear()  # one dataset per worker: a reused actor keeps it, a new dataset replaces it
        _DATASETS[key] = (sealed_dataset(dataset), forbidden_indices(dataset))
    return _DATASETS[key]


# ---------------------------------------------------------------- MLflow child run


def find_trial_run(ctx: TrialContext, trial_id: str):
    """The MLflow run of this Ray trial, if an earlier attempt created one."""
    existing = tracking.child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, {"ray_trial_id": trial_id})
    return min(existing, key=lambda r: r.info.start_time) if existing else None


def finished_before(run) -> bool:
    """A run that ended for good: completed (or stopped early), or diverged (never retried)."""
    if run is None:
        return False
    return run.info.status == "FINISHED" or (
        run.info.status == "FAILED" and run.data.tags.get("failure_reason") == "diverged"
    )


def trial_params(ctx: TrialContext, config: TrainConfig) -> dict[str, object]:
    """Common parameters, the model's own and the searched ones (harness.methods.run_params)."""
    from harness.methods import run_params

    return run_params(config, config.epochs or 0, ctx.searched)


def open_trial_run(ctx: TrialContext, trial_id: str, config: TrainConfig, tags: dict[str, str],
                   run=None, name: str = "") -> tracking.RunRef:
    """This trial's child run: reopened when it exists (retry or resume), created otherwise."""
    parent = tracking.RunRef(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id)
    run = run if run is not None else find_trial_run(ctx, trial_id)
    if run is not None:
        ref = tracking.RunRef(ctx.tracking_uri, ctx.experiment_id, run.info.run_id)
        attempts = int(run.data.tags.get("attempts", "1")) + 1
        tracking.reopen_run(ref)
        tracking.set_tags(ref, {**tags, "attempts": attempts})
        return ref
    return tracking.start_run(
        ctx.tracking_uri, ctx.experiment_id, name or f"trial-{trial_id}", params=trial_params(ctx, config),
        tags={**tags, "attempts": "1"}, parent=parent,
    )


def replay_finished(run, done_iterations: int, tracking_uri: str) -> None:
    """Report again what a trial that had ended logged after its last checkpoint, without training.

    Ray's experiment snapshot can lag the trials: a trial that finished just before the driver
    was killed comes back as unfinished. Its MLflow run holds every report, so the restored
    trial hands Tune the missing ones and ends; it is neither re-run nor logged twice.
    """
    from ray import tune

    client = tracking.RunRef(tracking_uri, run.info.experiment_id, run.info.run_id).client
    histories = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
                 for k in (*REPORTED_METRICS, "epoch")}
    steps = sorted(histories["val_H"])
    for index, step in enumerate(steps[done_iterations:], start=done_iterations + 1):
        tune.report({**{k: h[step] for k, h in histories.items() if step in h}, PASS: index, "diverged": 0.0})
    if run.data.tags.get("failure_reason") == "diverged":
        tune.report({"val_H": 0.0, "val_acc_seen": 0.0, "val_acc_unseen": 0.0, "val_ausuc": 0.0, "diverged": 1.0, PASS: len(steps) + 1,
                     "diverged_step": float(run.data.tags.get("diverged_step", 0)),
                     "error": run.data.tags.get("error", "diverged")})


def _read_state(checkpoint) -> dict[str, Any]:
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        path = Path(folder) / STATE_FILE
        return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------- the trainable


class TrialReporter:
    """fit()'s reporter for one trial: logs every validation pass to MLflow and reports to Tune.

    It holds what the passes share: the pass count, when the last checkpoint was taken, the latest
    pass Tune has not seen, and the MLflow metric buffer. A restored trial replays its passes up to
    the checkpoint (`done_iterations`) without reporting them again, and never logs an MLflow step
    it already logged (`logged_up_to`).
    """

    def __init__(self, ctx: TrialContext, ref: tracking.RunRef, config: TrainConfig, done_iterations: int,
                 logged_up_to: int | None) -> None:
        self.ctx, self.ref, self.done_iterations, self.logged_up_to = ctx, ref, done_iterations, logged_up_to
        self.step_key = "epoch" if config.reports_per_epoch == 1 else "iteration"
        self.iteration = 0
        self.last_checkpoint = -math.inf
        self.unreported: dict[str, float] = {}  # the latest pass Tune has not seen, if any
        # Metrics reach MLflow in batches; everything up to a checkpoint is written before it, so a
        # restored trial that skips the passes up to its checkpoint never leaves a hole.
        self.metrics_out = tracking.MetricBuffer(ref, ctx.metrics_interval_s)

    def __call__(self, record: dict[str, float]) -> None:
        from ray import tune

        self.iteration += 1
        if self.iteration <= self.done_iterations:  # replayed pass, already reported before the restore
            return
        metrics = {k: float(record[k]) for k in REPORTED_METRICS if k in record}
        step = int(record["epoch"]) if self.step_key == "epoch" else self.iteration
        if self.logged_up_to is None or step > self.logged_up_to:
            self.metrics_out.add(metrics, step=step)  # the epoch is the step, not a metric
        result = {**metrics, "epoch": float(record["epoch"]), PASS: self.iteration, "diverged": 0.0}
        if self.ctx.report_passes is not None and self.iteration not in self.ctx.report_passes:
            self.unreported = result
            return  # nothing decides on this pass: no round trip to the driver (the last goes after fit)
        self.unreported = {}
        now = time.monotonic()
        if now - self.last_checkpoint < self.ctx.checkpoint_interval_s:
            tune.report(result)
            return
        self.last_checkpoint = now
        self.metrics_out.flush()
        with tempfile.TemporaryDirectory() as folder:
            state = {"iteration": self.iteration, "epoch": record["epoch"], "step": record["step"],
                     "run_id": self.ref.run_id}
            (Path(folder) / STATE_FILE).write_text(json.dumps(state))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def _trial_tags(ctx: TrialContext, config: TrainConfig, trial_id: str, params: dict[str, Any]) -> dict[str, str]:
    return {
        "kind": "trial", "dataset": config.dataset, "model": config.model, "ray_trial_id": trial_id,
        "node": socket.gethostname(), "ray_node": node_name(), "git_commit": ctx.git_commit,
        "search": ctx.search_name, "paper_config": str(same_point(params, ctx.paper_point)).lower(),
    }


def _dataset_or_fail(ctx: TrialContext, trial_id: str, config: TrainConfig, tags: dict[str, str],
                     previous, name: str = "") -> tuple[GZSLDataset, np.ndarray]:
    """This node's sealed dataset; when unreadable, the failure goes to MLflow too before Ray retries it."""
    try:
        return trial_dataset(config)
    except FeatureCacheError as err:
        # Record the failure in MLflow too, then let Ray retry it (another node may work).
        ref = open_trial_run(ctx, trial_id, config, tags, previous, name)
        tracking.set_tags(ref, {"error": str(err)[:5000], "failure_reason": "feature cache unreadable"})
        tracking.end_run(ref, "FAILED")
        raise


def _fit_and_report(config: TrainConfig, dataset: GZSLDataset, forbidden: np.ndarray, reporter: TrialReporter):
    """fit() with the reporter; the FitResult, or None when the configuration diverged (recorded, not retried)."""
    from ray import tune

    ref, metrics_out = reporter.ref, reporter.metrics_out
    try:
        result = fit(config, dataset, reporter=reporter)
        check_sealed(result.view, forbidden)
        if reporter.unreported:  # the last pass, unless it was a rung: Tune gets the final metrics
            tune.report(reporter.unreported)
    except DivergenceError as err:
        # A NaN loss is a property of the configuration: record it as failed, do not retry it.
        metrics_out.flush()
        tracking.set_tags(ref, {"failure_reason": "diverged", "error": str(err), "diverged_epoch": err.epoch,
                                "diverged_step": err.step})
        tracking.end_run(ref, "FAILED")
        tune.report({"val_H": 0.0, "val_acc_seen": 0.0, "val_acc_unseen": 0.0, "val_ausuc": 0.0, "diverged": 1.0,
                     PASS: reporter.iteration + 1, "diverged_step": float(err.step), "error": str(err)})
        return None
    except SystemExit:
        # Tune stops a trial by raising SystemExit inside tune.report: ASHA stopping it early (the
        # driver's callback then ends the run FINISHED) or the search being interrupted (the run
        # is ended KILLED, and a resumed search continues it). Only the driver knows which.
        with contextlib.suppress(Exception):  # tracking down: the stop must still go through
            metrics_out.flush()
        raise
    except BaseException as err:
        with contextlib.suppress(Exception):  # the error to record is `err`, not a second one
            metrics_out.flush()
        tracking.set_tags(ref, {"error": f"{type(err).__name__}: {err}"[:5000], "failure_reason": type(err).__name__})
        tracking.end_run(ref, "FAILED")
        raise
    return result


def run_trial(params: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune function trainable: one configuration, logged every validation pass, reported at ASHA's rungs."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    config = trial_config(ctx.base, params)
    done_iterations = int(_read_state(tune.get_checkpoint()).get("iteration", 0))
    tags = _trial_tags(ctx, config, trial_id, params)
    previous = find_trial_run(ctx, trial_id)
    if finished_before(previous):  # restored by a resumed search, but it had ended: do not re-run it
        replay_finished(previous, done_iterations, ctx.tracking_uri)
        return
    name = trial_run_name(tune.get_context().get_trial_name(), trial_id, tags["paper_config"] == "true")
    dataset, forbidden = _dataset_or_fail(ctx, trial_id, config, tags, previous, name)
    tags["feature_cache_id"] = dataset.feature_cache_id
    ref = open_trial_run(ctx, trial_id, config, tags, previous, name)
    # A reopened run may hold epochs beyond the last checkpoint (Ray's snapshot can lag MLflow):
    # never log a step twice.
    logged_up_to = tracking.max_metric_step(ref, "val_H") if previous is not None else None
    reporter = TrialReporter(ctx, ref, config, done_iterations, logged_up_to)
    result = _fit_and_report(config, dataset, forbidden, reporter)
    if result is None:
        return
    extra = {k: v for k, v in result.metrics.items() if k not in (*REPORTED_METRICS, *CONSTANT_METRICS)}
    reporter.metrics_out.add(extra, step=int(result.history[-1]["epoch"]) if result.history else 0)
    reporter.metrics_out.flush()
    constants = {k: f"{result.metrics[k]:.4g}" for k in CONSTANT_METRICS if k in result.metrics}
    tracking.set_tags(ref, {"stopped_early": "false", "fit_seconds": f"{result.seconds:.2f}", **constants})
    tracking.end_run(ref, "FINISHED")
