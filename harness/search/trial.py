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
   report carrying the pass count as `pass`, ASHA's time attribute.

A trial checkpoints through Tune's checkpoint API (`tune.report(..., checkpoint=)`): with every
report ASHA sees (its rungs), and between them, at most every `checkpoint_interval_s` seconds, with
a report that repeats the last pass's metrics and carries `checkpoint_only` (ASHA has recorded
every rung up to that pass, and the searcher skips such reports: they decide nothing). The
checkpoint holds the trainer's TrainState (model, optimiser, sampler position and random state as
the trainer consumed them, the step reached; harness.trainer.save_train_state) beside
`trial_state.json` (the pass count and the run). A restored trial continues from that step; on the
same host and thread count it ends with exactly the metrics of an uninterrupted trial. A checkpoint
written before train states existed (pass count only) replays training from the start and reports
only the passes after it. When the driver asks the trials to stop (SIGTERM, `request_stop`), each
writes one last checkpoint at its next step. Per-pass metrics reach MLflow in one batch at most
every `metrics_interval_s` seconds, and always before a checkpoint and at the run's end (a
restored trial never leaves a hole, never logs a step twice). Every Tune report is a round trip
to the driver; on short trials, a report, a checkpoint and an MLflow write on every pass cost two
concurrent trials about a third of their throughput (bench/search.py, docs/performance.md).
"""

from __future__ import annotations

import contextlib
import errno
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
from harness.trainer import (
    DivergenceError,
    TrainState,
    fit,
    load_train_state,
    resolve_dataset,
    save_train_state,
)

REPORTED_METRICS = ("val_acc_seen", "val_acc_unseen", "val_H", "val_zsl_top1", "val_ausuc", "loss")
# Constant for a dataset: a tag, not a metric to chart.
CONSTANT_METRICS = ("attention_chance",)
STATE_FILE = "trial_state.json"
PASS = "pass"  # the validation passes a trial has run, in every Tune report: ASHA's time attribute
CHECKPOINT_ONLY = "checkpoint_only"  # a report that only carries a checkpoint: it decides nothing
STOP_KEY = "harness-search-stop:"  # + the Ray job id: set by a driver asking its trials to checkpoint now


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


def _read_state(checkpoint) -> tuple[dict[str, Any], TrainState | None]:
    """(trial_state.json, the trainer's state or None for a checkpoint older than train states)."""
    if checkpoint is None:
        return {}, None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / STATE_FILE
        return (json.loads(path.read_text()) if path.exists() else {}), load_train_state(folder)


def no_space(err: BaseException) -> bool:
    """An OSError (or pyarrow's IOError) saying the disk is full."""
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)


def _stop_key() -> str:
    import ray

    return STOP_KEY + ray.get_runtime_context().get_job_id()


def request_stop() -> None:
    """Driver side: ask this job's running trials to write a last checkpoint at their next step."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_stop_key(), b"1", overwrite=True)


def stop_requested() -> bool:
    """Trial side: whether the driver asked for a last checkpoint (False when Ray cannot say)."""
    from ray.experimental import internal_kv

    try:
        return internal_kv._internal_kv_get(_stop_key()) is not None
    except Exception:  # noqa: BLE001 - no answer is no request
        return False


# ---------------------------------------------------------------- the trainable


class TrialReporter:
    """fit()'s reporter and step hook for one trial: logs every validation pass to MLflow, reports
    to Tune and checkpoints.

    It holds what the passes share: the pass count, when the last checkpoint was taken, the pass
    ASHA waits for (reported with a checkpoint once its step is done), the latest pass Tune has not
    seen, and the MLflow metric buffer. A trial restored from a train state continues its pass count
    (`done_iterations`); one restored from an older checkpoint (`replay`) reruns its passes up to the
    checkpoint without reporting them again. It never logs an MLflow step it already logged
    (`logged_up_to`).
    """

    STOP_POLL_S = 1.0  # how often a trial asks whether the driver wants a last checkpoint

    def __init__(self, ctx: TrialContext, ref: tracking.RunRef, config: TrainConfig, done_iterations: int,
                 logged_up_to: int | None, replay: bool = True) -> None:
        self.ctx, self.ref, self.logged_up_to = ctx, ref, logged_up_to
        self.done_iterations = done_iterations if replay else 0
        self.step_key = "epoch" if config.reports_per_epoch == 1 else "iteration"
        self.iteration = 0 if replay else done_iterations
        self.last_checkpoint = time.monotonic()  # a restored trial has one; a new one needs a pass or N s
        self.last_stop_poll = -math.inf
        self.stop_checkpointed = False
        self.pending: dict[str, Any] | None = None  # a pass ASHA decides on, reported after its step
        self.last_result: dict[str, Any] = {}  # the latest pass's result (what a checkpoint-only report repeats)
        self.unreported: dict[str, float] = {}  # the latest pass Tune has not seen, if any
        # Metrics reach MLflow in batches; everything up to a checkpoint is written before it, so a
        # restored trial that skips the passes up to its checkpoint never leaves a hole.
        self.metrics_out = tracking.MetricBuffer(ref, ctx.metrics_interval_s)

    def __call__(self, record: dict[str, float]) -> None:
        self.iteration += 1
        if self.iteration <= self.done_iterations:  # replayed pass, already reported before the restore
            return
        metrics = {k: float(record[k]) for k in REPORTED_METRICS if k in record}
        step = int(record["epoch"]) if self.step_key == "epoch" else self.iteration
        if self.logged_up_to is None or step > self.logged_up_to:
            self.metrics_out.add(metrics, step=step)  # the epoch is the step, not a metric
        result = {**metrics, "epoch": float(record["epoch"]), PASS: self.iteration, "diverged": 0.0}
        self.last_result = result
        if self.ctx.report_passes is not None and self.iteration not in self.ctx.report_passes:
            self.unreported = result
            return  # nothing decides on this pass: no round trip to the driver (the last goes after fit)
        self.unreported = {}
        self.pending = result  # reported with a checkpoint once the step is done (after_step)

    def after_step(self, epoch: int, global_step: int, state) -> None:
        """fit()'s step hook: the pending ASHA report with a checkpoint, else a checkpoint-only report
        when `checkpoint_interval_s` has passed or the driver asked for a last one."""
        from ray import tune

        if self.iteration <= self.done_iterations and self.done_iterations:
            return  # replaying an older checkpoint's passes: nothing new to save
        now = time.monotonic()
        if self.pending is not None:
            result, self.pending = self.pending, None
        elif now - self.last_checkpoint >= self.ctx.checkpoint_interval_s or self._stop_asked(now):
            result = {"val_H": math.nan, "val_ausuc": math.nan, **self.last_result, PASS: self.iteration, "diverged": 0.0,
                      CHECKPOINT_ONLY: 1.0}
        else:
            return
        result["step"] = global_step
        self.last_checkpoint = now
        self.metrics_out.flush()
        with tempfile.TemporaryDirectory() as folder:
            train_state = state()
            save_train_state(train_state, folder)
            meta = {"iteration": self.iteration, "epoch": epoch, "step": global_step, "run_id": self.ref.run_id,
                    "last_result": self.last_result}
            (Path(folder) / STATE_FILE).write_text(json.dumps(meta))
            try:
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
            except OSError as err:
                if not no_space(err):
                    raise
                # The search folder is full: Tune did not register this checkpoint (the previous one
                # stays the one to resume from); the pass still reaches ASHA, and the driver's disk
                # guard stops the search with one line naming the folder.
                tune.report(result)

    def _stop_asked(self, now: float) -> bool:
        if self.stop_checkpointed or now - self.last_stop_poll < self.STOP_POLL_S:
            return False
        self.last_stop_poll = now
        self.stop_checkpointed = stop_requested()
        return self.stop_checkpointed


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


def _fit_and_report(config: TrainConfig, dataset: GZSLDataset, forbidden: np.ndarray, reporter: TrialReporter,
                    resume: TrainState | None = None):
    """fit() with the reporter; the FitResult, or None when the configuration diverged (recorded, not retried)."""
    from ray import tune

    ref, metrics_out = reporter.ref, reporter.metrics_out
    try:
        result = fit(config, dataset, reporter=reporter, checkpoint=reporter.after_step, resume=resume)
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
    saved, train_state = _read_state(tune.get_checkpoint())
    done_iterations = int(saved.get("iteration", 0))
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
    reporter = TrialReporter(ctx, ref, config, done_iterations, logged_up_to, replay=train_state is None)
    reporter.last_result = dict(saved.get("last_result", {}))
    if train_state is not None:
        tracking.set_tags(ref, {"resumed_from_step": train_state.global_step})
    result = _fit_and_report(config, dataset, forbidden, reporter, train_state)
    if result is None:
        return
    extra = {k: v for k, v in result.metrics.items() if k not in (*REPORTED_METRICS, *CONSTANT_METRICS)}
    reporter.metrics_out.add(extra, step=int(result.history[-1]["epoch"]) if result.history else 0)
    reporter.metrics_out.flush()
    constants = {k: f"{result.metrics[k]:.4g}" for k in CONSTANT_METRICS if k in result.metrics}
    tracking.set_tags(ref, {"stopped_early": "false", "fit_seconds": f"{result.seconds:.2f}", **constants})
    tracking.end_run(ref, "FINISHED")
