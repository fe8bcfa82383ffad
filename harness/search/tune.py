"""Ray Tune pieces of a search: Optuna TPE proposes, ASHA stops, callbacks keep MLflow honest.

- OptunaSearch (TPE, seeded, constant liar for parallel trials) with the paper configuration
  enqueued as the first point (points_to_evaluate).
- ASHA on the validation H reported every epoch (or `reports_per_epoch` times an epoch). The
  paper configuration's trial is never stopped early, so the search always knows its full-length
  validation H and can never end worse than the paper's settings.
- A driver-side callback ends the MLflow run of every trial that ended without doing so itself
  (a crashed worker, an error after the retries), so no trial run is left RUNNING.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from harness import tracking
from harness.search.space import ResolvedSpace, same_point
from harness.search.trial import CHECKPOINT_ONLY, PASS, TrialContext, run_trial

METRIC, MODE = "val_H", "max"  # what the searcher learns from and the best configuration is chosen by
# What ASHA compares trials by at its rungs: AUSUC ranks trials from the first epochs, where H is
# still 0 for most of them (either accuracy 0); see docs/search.md, "ASHA's rung metric".
RUNG_METRIC = "val_ausuc"


def passes_done(result: dict | None) -> int:
    """Validation passes a trial had run at this result (Tune's own count is of reports only)."""
    result = result or {}
    return int(result.get(PASS, result.get("training_iteration", 0)) or 0)


class PaperFirstASHA(ASHAScheduler):
    """ASHA that records the paper configuration's results at every rung but never stops it."""

    def __init__(self, protected: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protected = dict(protected)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        # Also at a rung that falls on max_t: stopped there, the paper's trial would end inside its
        # last report and never log its final metrics.
        if action == TrialScheduler.STOP and same_point(dict(trial.config), self.protected):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


class TrialRunsCallback(tune.Callback):
    """Ends the MLflow run of a trial Ray saw finish or fail, if the trial left it RUNNING."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_t: int,
                 rungs: tuple[int, ...] = (), reports_per_epoch: int = 1, rung_metric: str = METRIC) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.max_t = max_t
        self.rungs, self.reports_per_epoch, self.rung_metric = rungs, reports_per_epoch, rung_metric

    def _runs(self, trial) -> list[tracking.RunRef]:
        runs = tracking.child_runs(self.tracking_uri, self.experiment_id, self.parent_run_id,
                                   {"ray_trial_id": trial.trial_id}, status="RUNNING")
        return [tracking.RunRef(self.tracking_uri, self.experiment_id, r.info.run_id) for r in runs]

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        iterations = passes_done(trial.last_result)
        for ref in self._runs(trial):
            tracking.set_tags(ref, {"ended_by": "driver: trial complete",
                                    "stopped_early": str(iterations < self.max_t).lower()})
            if iterations < self.max_t:
                # Callbacks pickled by an older search lack the rung fields: getattr.
                tracking.set_description(ref, stopped_note(
                    iterations, self.max_t, getattr(self, "rungs", ()), getattr(self, "reports_per_epoch", 1),
                    getattr(self, "rung_metric", METRIC), (trial.last_result or {}).get(getattr(self, "rung_metric", METRIC))))
            tracking.end_run(ref, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        message = trial_error(trial)
        for ref in self._runs(trial):
            tracking.set_tags(ref, {"ended_by": "driver: trial error", "error": message[:5000]})
            tracking.end_run(ref, "FAILED")


MIN_FREE_ENV = "HARNESS_MIN_FREE_MB"  # free space the search folder and artifact folder must keep (default 64)
DISK_FULL: dict[str, int] = {}  # folder -> free bytes, set by DiskSpaceGuard when it stopped the search


class DiskSpaceGuard(tune.Callback):
    """Stops the search, as Ctrl+C does, while the folders it writes still hold `min_free` bytes.

    A disk that fills to the last byte truncates what Tune rewrites in place (the experiment state,
    result files: a resume then trips on them), so the driver stops first and keeps the reserve for
    Tune's last experiment state; the CLI turns the stop into one line naming the folder
    (`DISK_FULL`). Checked at most every `interval_s` from Tune's loop, in the driver.
    """

    def __init__(self, folders: list[str], min_free: int, interval_s: float = 0.5) -> None:
        self.folders, self.min_free, self.interval_s = list(folders), int(min_free), interval_s
        self._checked = -math.inf

    def on_step_begin(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if DISK_FULL or now - self._checked < self.interval_s:
            return
        self._checked = now
        for folder in self.folders:
            free = shutil.disk_usage(_existing(folder)).free
            if free < self.min_free:
                DISK_FULL[folder] = free
                os.kill(os.getpid(), signal.SIGINT)  # Tune saves its state and returns, as on Ctrl+C
                return


def _existing(folder: str) -> str:
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return str(path)


def guarded_folders(plan: TunePlan) -> list[str]:
    """The search folder and, for a store with local artifacts, the artifact folder."""
    folders = [str(plan.storage)]
    location = tracking._artifact_location(plan.context.tracking_uri)
    if location and location.startswith("file://"):
        folders.append(location.removeprefix("file://"))
    return folders


def disk_space_guard(plan: TunePlan) -> DiskSpaceGuard:
    return DiskSpaceGuard(guarded_folders(plan), int(float(os.environ.get(MIN_FREE_ENV, 64)) * 2**20))


class ProgressCallback(tune.Callback):
    """A tqdm bar on stderr: trials ended out of the planned number, best validation H so far."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self.best = -math.inf
        self.failed = 0
        self._bar = None

    def __getstate__(self) -> dict:  # the bar is not part of the experiment state
        return {**self.__dict__, "_bar": None}

    def setup(self, **info) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=self.total, desc=self.label, unit="trial", file=sys.stderr, dynamic_ncols=True)

    def _tick(self, trial, ok: bool) -> None:
        if self._bar is None:
            self.setup()
        value = (trial.last_result or {}).get(METRIC)
        if ok and isinstance(value, int | float) and math.isfinite(value):
            self.best = max(self.best, float(value))
        self.failed += 0 if ok else 1
        self._bar.update(1)
        postfix = {"best_val_H": f"{self.best:.4f}"} if self.best > -math.inf else {}
        if self.failed:
            postfix["failed"] = self.failed
        self._bar.set_postfix(postfix)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._tick(trial, True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._tick(trial, False)

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def last_line(text: str) -> str:
    """The last non-empty line of a traceback (the exception and its message), ANSI codes removed."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    return lines[-1][:2000] if lines else ""  # a damaged cache's line names the folder twice and a command


def trial_error(trial) -> str:
    """The last line of a failed trial's error file (the exception and its message)."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    return last_line(text) or "unknown error"


def stopped_note(passes: int, max_t: int, rungs: tuple[int, ...], reports_per_epoch: int, metric: str,
                 value: float | None) -> str:
    """The description of an ASHA-stopped trial run: where it stopped and on what."""
    epoch, epochs = math.ceil(passes / reports_per_epoch), math.ceil(max_t / reports_per_epoch)
    where = f"pass {passes} (epoch {epoch} of {epochs})" if reports_per_epoch > 1 else f"epoch {epoch} of {epochs}"
    rung = f", at rung {rungs.index(passes) + 1} of {len(rungs)}" if passes in rungs else ""
    at = f" ({metric} {value:.4g} there)" if isinstance(value, int | float) else ""
    return (f"Stopped early by ASHA after {where}{rung}: its {metric} was below the top third of the trials "
            f"that reached the rung{at}. Not a candidate for the best configuration (full-length trials only).")


def trial_name(trial) -> str:
    """`trial-007`: the order in which the searcher proposed the trial (Tune's experiment tag starts with
    its count from 1); stored with the trial, so a resumed search keeps it."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return f"trial-{int(head) - 1:03d}" if head.isdigit() else f"trial-{trial.trial_id}"


def rung_passes(max_t: int, grace: int, reduction_factor: int) -> tuple[int, ...]:
    """The passes at which ASHA (one bracket) decides: grace * rf^k up to max_t, as Ray computes them."""
    rungs = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
    return tuple(sorted(grace * reduction_factor ** k for k in range(rungs)))


def grace_period(max_t: int) -> int:
    """ASHA's first rung: a fifth of a trial's reports (epoch 4 of 20), at least one."""
    return max(1, min(max_t, math.ceil(max_t / 5)))


@dataclass(frozen=True)
class TunePlan:
    """Everything that shapes one model's Tune experiment."""

    space: ResolvedSpace
    context: TrialContext
    storage: Path  # the search folder; the experiment lives in storage/<name>
    name: str
    num_samples: int
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    seed: int
    max_t: int  # reports per trial at full length (epochs * reports_per_epoch)
    max_failures: int = 2
    reduction_factor: int = 3
    early_stopping: bool = True  # False (--scheduler none): every trial runs max_t passes
    report_every_pass: bool = False  # True: every pass goes to Tune (the earlier behaviour, for benchmarks)
    searcher: str = "tpe"  # "tpe" or "random" (--searcher)
    rung_metric: str = RUNG_METRIC  # what ASHA ranks trials by at its rungs
    grace: int | None = None  # ASHA's first rung in passes; None: a fifth of max_t
    stop: Any = None  # a tune.Stopper for the whole experiment (bench/search_quality.py's epoch budget)

    @property
    def grace_period(self) -> int:
        return self.grace or grace_period(self.max_t)

    @property
    def report_passes(self) -> tuple[int, ...] | None:
        """The passes a trial reports to Tune besides its last: ASHA's rungs, none without ASHA."""
        if self.report_every_pass:
            return None
        return rung_passes(self.max_t, self.grace_period, self.reduction_factor) if self.early_stopping else ()

    @property
    def experiment_path(self) -> Path:
        return self.storage / self.name


CHECKPOINT_INTERVAL_ENV = "HARNESS_CHECKPOINT_INTERVAL_S"  # seconds between a trial's checkpoints (driver's env)


def trainable(plan: TunePlan):
    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    ctx = replace(plan.context, report_passes=plan.report_passes)
    if os.environ.get(CHECKPOINT_INTERVAL_ENV):
        ctx = replace(ctx, checkpoint_interval_s=float(os.environ[CHECKPOINT_INTERVAL_ENV]))
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)


class CheckpointAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that skips a trial's checkpoint-only reports (they repeat a pass, or carry none yet)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not result.get(CHECKPOINT_ONLY):
            super().on_trial_result(trial_id, result)


def searcher(plan: TunePlan):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if plan.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=plan.seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=plan.seed, n_startup_trials=min(10, max(2, plan.num_samples // 3)), multivariate=True,
            constant_liar=True,
        )
    return CheckpointAwareOptunaSearch(space=plan.space.distributions(), metric=METRIC, mode=MODE,
                        points_to_evaluate=[dict(plan.space.defaults)], sampler=sampler)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(plan: TunePlan) -> tune.Tuner:
    scheduler = PaperFirstASHA(
        plan.space.defaults, time_attr=PASS, metric=plan.rung_metric, mode=MODE, max_t=plan.max_t,
        grace_period=plan.grace_period, reduction_factor=plan.reduction_factor,
        stop_last_trials=False,  # a trial that reaches max_t ends by itself, with its final metrics
    ) if plan.early_stopping else None
    ctx = plan.context
    run_config = tune.RunConfig(
        name=plan.name, storage_path=str(plan.storage),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[TrialRunsCallback(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, plan.max_t,
                                     plan.report_passes or (), int(ctx.base.get("reports_per_epoch") or 1),
                                     plan.rung_metric),
                   ProgressCallback(plan.num_samples, f"search {plan.space.model}"), disk_space_guard(plan)],
        verbose=0, stop=plan.stop,
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher(plan), scheduler=scheduler, num_samples=plan.num_samples,
        max_concurrent_trials=plan.max_concurrent, reuse_actors=True, trial_dirname_creator=_trial_dirname,
        trial_name_creator=trial_name,
    )
    return tune.Tuner(trainable(plan), tune_config=tune_config, run_config=run_config)


def restore_tuner(plan: TunePlan) -> tune.Tuner | None:
    """The interrupted experiment, or None when the driver died before Tune saved any state."""
    path = str(plan.experiment_path)
    if not tune.Tuner.can_restore(path):
        return None
    return tune.Tuner.restore(path, trainable=trainable(plan), resume_unfinished=True, resume_errored=True)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    status: str  # completed | stopped early | diverged | failed
    iterations: int
    metrics: dict[str, float]
    error: str = ""
    paper: bool = False
    history: dict[int, float] = field(default_factory=dict)  # pass -> val_H of each report Tune received

    @property
    def val_H(self) -> float:
        value = self.metrics.get(METRIC)
        return float(value) if isinstance(value, int | float) else float("nan")


def collect(results, plan: TunePlan) -> list[TrialRecord]:
    """One record per trial of a ResultGrid, in trial-creation order."""
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        params = {k: v for k, v in (result.config or {}).items() if k in plan.space.params}
        iterations = passes_done(metrics)
        trial_id = str(metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_"))
        if result.error is not None:
            status, error = "failed", last_line(str(result.error)) or type(result.error).__name__
        elif metrics.get("diverged"):
            status, error = "diverged", str(metrics.get("error", ""))
        else:
            status, error = "completed", ""
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and k.startswith(("val_", "loss"))}
        rows.append(TrialRecord(trial_id, params, status, iterations, numeric, error,
                                same_point(params, plan.space.defaults), _reported_H(result)))
    longest = max((r.iterations for r in rows if r.status == "completed"), default=0)
    return [
        replace(r, status="stopped early") if r.status == "completed" and r.iterations < longest else r
        for r in rows
    ]


def _reported_H(result) -> dict[int, float]:
    """pass -> validation H of every report the trial made to Tune (its rungs and its last)."""
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or METRIC not in frame or PASS not in frame:
        return {}
    return {int(p): float(h) for p, h in zip(frame[PASS], frame[METRIC], strict=True)
            if p == p and isinstance(h, int | float) and math.isfinite(h)}


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """Highest final validation H among trials that ran their full length (ties: earliest)."""
    full = [r for r in records if r.status == "completed" and math.isfinite(r.val_H)]
    return max(full, key=lambda r: r.val_H, default=None)
