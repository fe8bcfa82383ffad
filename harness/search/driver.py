"""One model's search, from the driver: Tune run (or its restore), trial tables, best trial, finals, summary.

`search_model` is the driver's one step per model, a short sequence of named steps: open (or
reopen) the model's MLflow parent run, run or restore the Tune experiment, write and log the
trial tables and plots, pick the best trial, retrain it on trainval with the final seeds and
evaluate on test, write the summary. Each step records how far the model got in the search folder
(search.json) so `--resume` carries on from there, and `EndRunsOnFailure` leaves no MLflow run
RUNNING whatever stops the driver. Ray, torch and the trainer are imported inside the steps, so
importing this module (the CLI does, for `--help`) stays light.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import tracking
from harness.errors import InputError
from harness.search.report import param_name, summary_text, trial_rows, write_table
from harness.search.settings import PROG, SearchSettings
from harness.search.space import ResolvedSpace, has_space
from harness.search.state import SearchState

if TYPE_CHECKING:
    from harness.search.tune import TrialRecord, TunePlan


class SearchFailed(RuntimeError):
    """No trial of a model's search completed (every one failed or diverged)."""


def resolve_models(model: str) -> list[str]:
    """--model as a list of models with a search space ("all": every one)."""
    from harness.methods import list_methods

    available = [m for m in list_methods() if has_space(m)]
    if model == "all":
        return available
    if model not in list_methods():
        raise InputError(f"--model: unknown model {model!r}; expected one of {', '.join(available + ['all'])}")
    if not has_space(model):
        raise InputError(f"--model {model}: no search space (expected search_spaces/{model}.py)")
    return [model]


def load_driver_dataset(settings: SearchSettings):
    """Load the dataset once on the driver: bad names or paths fail here, before any trial, in one line
    naming every missing input, the command that builds the cache and the synthetic stand-in."""
    from harness.data.registry import load_or_explain

    return load_or_explain(settings.dataset, data_root=settings.data_root, cache_dir=settings.cache_dir,
                           word_vectors=settings.word_vectors, data_seed=settings.data_seed)


def _max_concurrent(settings: SearchSettings, resources: dict[str, float]) -> int:
    if settings.max_concurrent:
        return settings.max_concurrent
    slots = int(resources.get("CPU", 1) // settings.cpus_per_trial)
    if settings.gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0) // settings.gpus_per_trial))
    return max(1, min(slots, settings.num_samples))


class EndRunsOnFailure:
    """Whatever stops a model's search (an error, Ctrl+C, SearchFailed), leave no MLflow run RUNNING.

    On the way out of a failure it ends the parent run and any child a dying worker could not end.
    The store itself may be what failed: then a resumed search ends them (end_orphans on resume).
    The original error always propagates.
    """

    def __init__(self, state: SearchState, parent: tracking.RunRef) -> None:
        self.state, self.parent = state, parent

    def __enter__(self) -> EndRunsOnFailure:
        return self

    def __exit__(self, exc_type, err, tb) -> bool:
        if err is None:
            return False
        try:
            tracking.end_orphans(self.state.tracking_uri, self.state.experiment_id, self.parent.run_id,
                                 reason=f"search stopped: {type(err).__name__}")
            if not isinstance(err, SearchFailed) and tracking.run_status(self.parent) == "RUNNING":
                status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
                tracking.set_tags(self.parent, {"error": f"{type(err).__name__}: {err}"[:5000]})
                tracking.end_run(self.parent, status)
        except Exception:  # the original error is what the user must see
            pass
        return False


def parent_run_name(model: str, settings: SearchSettings) -> str:
    """`dazle synthetic 19:52` (the runs table shows the date), or `dazle synthetic smoke-test`: short
    enough for the UI's name column, it says what the search was and tells a smoke test apart."""
    return f"{model} {settings.dataset} {'smoke-test' if settings.smoke_test else time.strftime('%H:%M')}"


def _parent_description(model: str, settings: SearchSettings, plan_info: dict[str, Any]) -> str:
    return (f"Search of {model}'s hyperparameters on {settings.dataset}'s validation classes: "
            f"{settings.num_samples} trials ({plan_info['searcher']}, {plan_info['scheduler']}), then the best "
            f"configuration retrained on trainval with {settings.final_seeds} seed(s) and tested once. "
            "Best configuration: the best.* params once the search is done; children: trial-NNN, final-seedN.")


def _open_parent(state: SearchState, model: str, space: ResolvedSpace, settings: SearchSettings,
                 plan_info: dict[str, Any], dataset) -> tracking.RunRef:
    """The model's parent run: created once and stored in the folder; reopened on resume."""
    entry = state.model(model)
    uri, exp = state.tracking_uri, state.experiment_id
    if entry.get("parent_run_id"):
        ref = tracking.RunRef(uri, exp, entry["parent_run_id"])
        ended = tracking.end_orphans(uri, exp, ref.run_id, reason="search driver died; resumed search")
        if ended:
            print(f"{PROG}: marked {len(ended)} orphaned run(s) of the interrupted search KILLED", file=sys.stderr)
        tracking.reopen_run(ref)
        tracking.set_tags(ref, {"resumed": int(entry.get("resumed", 0)) + 1})
        entry["resumed"] = int(entry.get("resumed", 0)) + 1
        return ref
    skip = ("model", "data_root", "cache_dir", "word_vectors", "experiment", "smoke_test", "epochs")
    params = {"dataset": settings.dataset, "model": model, "stage": "search",
              **{k: v for k, v in asdict(settings).items() if k not in skip and v is not None},
              "epochs": plan_info.pop("epochs"), **plan_info,
              "search_space": json.dumps({param_name(k): v for k, v in space.params.items()}, sort_keys=True),
              "paper_config": json.dumps({param_name(k): v for k, v in space.defaults.items()}, sort_keys=True)}
    tags = {"kind": "search", "dataset": settings.dataset, "model": model, "storage": str(state.folder),
            "feature_cache_id": dataset.feature_cache_id}
    ref = tracking.start_run(uri, exp, parent_run_name(model, settings), params, tags,
                             description=_parent_description(model, settings, plan_info))
    entry.update(parent_run_id=ref.run_id, stage="searching")
    state.save()
    return ref


@dataclass(frozen=True)
class ModelSearch:
    """What the steps of one model's search share."""

    model: str
    space: ResolvedSpace
    state: SearchState
    settings: SearchSettings
    plan: TunePlan
    parent: tracking.RunRef
    commit: str

    @property
    def entry(self) -> dict[str, Any]:
        return self.state.model(self.model)

    @property
    def results_dir(self) -> Path:
        return self.state.results_dir(self.model)

    @functools.cached_property
    def run_names(self) -> dict[str, str]:
        """Ray trial id -> the trial's MLflow run name (trial-007), read once the trials have ended."""
        runs = tracking.child_runs(self.state.tracking_uri, self.state.experiment_id, self.parent.run_id,
                                   {"kind": "trial"})
        return {r.data.tags.get("ray_trial_id", ""): r.info.run_name for r in runs}


def _start(model: str, space: ResolvedSpace, state: SearchState, settings: SearchSettings, dataset,
           resources: dict[str, float]) -> ModelSearch:
    """Plan the model's Tune experiment and open its parent run."""
    from harness.search.trial import TrialContext
    from harness.search.tune import RUNG_METRIC, TunePlan, grace_period

    epochs = settings.epochs or dataset.default_epochs
    max_t = epochs * settings.reports_per_epoch
    concurrent = _max_concurrent(settings, resources)
    asha = settings.scheduler == "asha"
    plan_info = {"epochs": epochs, "max_concurrent": concurrent,
                 "scheduler": f"ASHA on {RUNG_METRIC}" if asha else "none",
                 "searcher": "TPE" if settings.searcher == "tpe" else "random"}
    if asha:
        plan_info.update(asha_max_t=max_t, asha_grace_period=grace_period(max_t))
    parent = _open_parent(state, model, space, settings, dict(plan_info), dataset)
    commit = tracking.git_commit()
    base = {**asdict(settings.base_config(model, "search", settings.seed)), "epochs": epochs}
    ctx = TrialContext(base, state.tracking_uri, state.experiment_id, parent.run_id, commit,
                       paper_point=dict(space.defaults), search_name=state.folder.name, searched=tuple(space.params))
    plan = TunePlan(space, ctx, state.folder, model, settings.num_samples, concurrent, settings.cpus_per_trial,
                    settings.gpus_per_trial, settings.seed, max_t, settings.max_failures,
                    early_stopping=asha, searcher=settings.searcher)
    return ModelSearch(model, space, state, settings, plan, parent, commit)


def _tune(search: ModelSearch, resume: bool):
    """The Tune experiment's results: run, restored and continued, or (finals cut off) only read back."""
    from harness.search.legacy import install_aliases
    from harness.search.tune import build_tuner, restore_tuner

    plan, settings, state = search.plan, search.settings, search.state
    if resume:
        install_aliases()  # a folder written before harness/search/ was a package names the old modules
    tuner = restore_tuner(plan) if resume else None
    if tuner is not None and search.entry.get("stage") == "final":
        return tuner.get_results()  # the search had ended; only the finals were cut off
    if tuner is None and plan.experiment_path.exists():
        # The driver died before Tune saved any state: start over, keep the remains aside.
        shutil.move(str(plan.experiment_path), str(plan.experiment_path) + f".stale-{int(time.time())}")
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the summary (and --json)
        results = (tuner or build_tuner(plan)).fit()
    if results.num_terminated + results.num_errors < len(results) or len(results) < plan.num_samples:
        # Ctrl+C: Tune saves its state and returns the unfinished experiment instead of raising.
        print(f"{PROG}: search interrupted; resume with: python -m {PROG} --dataset {settings.dataset} "
              f"--storage {state.folder} --resume", file=sys.stderr)
        raise KeyboardInterrupt
    return results


def _param_plots(records, space: ResolvedSpace, folder: Path) -> list[Path]:
    """Validation H against each searched hyperparameter (lambda and k for DAZLE), all trials."""
    from harness import plots

    out = []
    usable = [r for r in records if r.status in ("completed", "stopped early")]
    for name, spec in space.params.items():
        if spec["type"] == "categorical" and not all(isinstance(c, int | float) for c in spec["choices"]):
            continue
        label = {"lam": "lambda", "num_attributes": "k (number of attributes)"}.get(name, name)
        stem = {"lam": "lambda", "num_attributes": "k"}.get(name, name)
        out.append(plots.metric_against_param(
            [float(r.params.get(name, math.nan)) for r in usable], [r.val_H for r in usable],
            folder / f"val_H_vs_{stem}.png", label, log_x=spec["type"] == "loguniform",
            highlight=[r.paper for r in usable], stopped=[r.status == "stopped early" for r in usable],
        ))
    return out


def _log_trials(search: ModelSearch, records: list[TrialRecord]) -> None:
    """The trial table (CSV + Markdown) and the val_H plots, in the results folder and the parent run."""
    table = write_table(trial_rows(records, list(search.space.params), search.run_names), search.results_dir, "trials")
    for path in [*table, *_param_plots(records, search.space, search.results_dir)]:
        tracking.log_artifact(search.parent, path, "tables" if path.suffix in (".csv", ".md") else "plots")


def _teach(search: ModelSearch, records: list[TrialRecord]) -> dict[str, Any]:
    """What the search teaches: importance of each parameter for validation H (at the report every
    trial reached), a parallel-coordinates plot and the acc_s/acc_u Pareto plot; logged to the parent."""
    from harness import plots
    from harness.search.insight import common_pass, importance, label, pareto_front

    usable = [r for r in records if r.status in ("completed", "stopped early")]
    at = common_pass([r.history for r in usable])
    points = [(r.params, r.history[at]) for r in usable] if at is not None else []
    result = importance(points, search.space.distributions(), at_pass=at, seed=search.settings.seed)
    if result.get("status") == "ok":
        tracking.log_metrics(search.parent, {f"importance/{label(k)}": v["mean"] for k, v in result["params"].items()})
    folder, paths = search.results_dir, []
    numeric = [n for n, spec in search.space.params.items()
               if spec["type"] != "categorical" or all(isinstance(c, int | float) for c in spec["choices"])]
    if usable and numeric:
        paths.append(plots.parallel_coordinates(
            {label(n): [float(r.params.get(n, math.nan)) for r in usable] for n in numeric},
            [label(n) for n in numeric if search.space.params[n]["type"] == "loguniform"],
            [r.val_H for r in usable], folder / "parallel_coordinates.png",
            dashed=[r.status == "stopped early" for r in usable],
            title=f"{search.model} trials by last validation H (dashed: stopped early by ASHA)"))
        seen = [r.metrics.get("val_acc_seen", math.nan) for r in usable]
        unseen = [r.metrics.get("val_acc_unseen", math.nan) for r in usable]
        full = [i for i, r in enumerate(usable) if r.status == "completed"]
        front = [full[i] for i in pareto_front([seen[i] for i in full], [unseen[i] for i in full])]
        chosen = max(full, key=lambda i: usable[i].val_H, default=None)
        paths.append(plots.seen_unseen_pareto(
            seen, unseen, front, folder / "val_acc_seen_vs_unseen.png",
            stopped=[r.status == "stopped early" for r in usable], highlight=[r.paper for r in usable], best=chosen,
            title=f"{search.model}: validation acc_s vs acc_u (front of full-length trials)"))
    for path in paths:
        tracking.log_artifact(search.parent, path, "plots")
    tracking.log_json(search.parent, result, "importance.json", "tables")
    return result


DAMAGED_CACHE = "damaged feature cache"  # harness.features.store.damaged() says this in its one line


def _stop_on_damaged_cache(search: ModelSearch, records: list[TrialRecord]) -> None:
    """A trial that read a damaged item stops the whole search with the cache's one line: the final
    retrain reads every trainval image, so no result of this cache can be trusted or finished."""
    damaged = next((r.error for r in records if DAMAGED_CACHE in r.error), None)
    if damaged is None:
        return
    tracking.set_tags(search.parent, {"error": "damaged feature cache"})
    tracking.end_run(search.parent, "FAILED")
    start = damaged.index(DAMAGED_CACHE)
    cut = damaged.rfind("Error: ", 0, start)  # drop the exception's name Ray put before the message
    raise InputError(damaged[cut + len("Error: "):] if cut >= 0 else damaged)


def _choose_best(search: ModelSearch, records: list[TrialRecord]) -> tuple[TrialRecord, TrialRecord | None]:
    """(best trial, the paper configuration's trial); SearchFailed when no trial completed."""
    from harness.search.tune import best_trial

    best = best_trial(records)
    paper = next((r for r in records if r.paper), None)
    if best is None:
        tracking.set_tags(search.parent, {"error": "no trial completed"})
        tracking.end_run(search.parent, "FAILED")
        raise SearchFailed(f"{search.model}: no trial of {len(records)} completed; "
                           f"see {search.results_dir / 'trials.md'}")
    tracking.log_metrics(search.parent, {"best_val_H": best.val_H,
                                         "paper_config_val_H": paper.val_H if paper else math.nan})
    best_name = search.run_names.get(best.trial_id, best.trial_id)
    # Once, when the search is done (params are write-once; a resumed search logs the same values).
    tracking.log_params(search.parent, {f"best.{param_name(k)}": v for k, v in best.params.items()})
    tracking.set_tags(search.parent, {"best_trial": best.trial_id, "best_run": best_name})
    search.entry.update(stage="final", best_trial=best.trial_id)
    search.state.save()
    return best, paper


def _finals(search: ModelSearch, best: TrialRecord) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Retrain the best configuration with each final seed, test once; (final runs, test mean/std)."""
    from harness.search.final import FinalJob, run_finals, summarize
    from harness.search.report import final_rows

    settings, state = search.settings, search.state
    final_results: list[dict[str, Any]] = []
    if settings.final_seeds:
        jobs = []
        for i in range(settings.final_seeds):
            final = settings.base_config(search.model, "final", settings.seed + i)
            values = {**asdict(final), **best.params}
            jobs.append(FinalJob(values, state.tracking_uri, state.experiment_id, search.parent.run_id,
                                 search.commit, state.folder.name, search.run_names.get(best.trial_id, best.trial_id),
                                 tuple(search.space.params)))
        final_results = run_finals(jobs, settings.cpus_per_trial, settings.gpus_per_trial)
    test = summarize(final_results)
    for path in write_table(final_rows(final_results, test), search.results_dir, "final"):
        tracking.log_artifact(search.parent, path, "tables")
    tracking.log_metrics(search.parent, {f"{k}_mean": v["mean"] for k, v in test.items()})
    tracking.log_metrics(search.parent, {f"{k}_std": v["std"] for k, v in test.items()})
    return final_results, test


def _finish(search: ModelSearch, records: list[TrialRecord], best: TrialRecord, paper: TrialRecord | None,
            finals: tuple[list[dict[str, Any]], dict[str, Any]], started: float,
            taught: dict[str, Any]) -> dict[str, Any]:
    """The model's summary: logged, written as summary.md, stored in search.json; the parent run ends."""
    final_results, test = finals
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = {
        "dataset": search.settings.dataset, "model": search.model, "best_config": best.params,
        "best_trial": best.trial_id, "best_run": search.run_names.get(best.trial_id, ""), "best_val_H": best.val_H, "paper_config": dict(search.space.defaults),
        "paper_config_val_H": paper.val_H if paper else None,
        "test": test, "final_runs": final_results, "trial_counts": counts, "importance": taught,
        "search_seconds": search.entry["search_seconds"], "seconds": time.perf_counter() - started,
        "parent_run_id": search.parent.run_id, "experiment_id": search.state.experiment_id,
        "results_dir": str(search.results_dir),
    }
    tracking.log_json(search.parent, summary, "summary.json", "tables")
    (search.results_dir / "summary.md").write_text(summary_text(summary) + "\n")
    tracking.end_run(search.parent, "FINISHED")
    search.entry.update(stage="done", summary=summary)
    search.state.save()
    return summary


def search_model(model: str, space: ResolvedSpace, state: SearchState, settings: SearchSettings, dataset,
                 resources: dict[str, float], resume: bool) -> dict[str, Any]:
    """One model's search, or its summary straight from the folder when it was done before."""
    from harness.search.tune import collect

    entry = state.model(model)
    if entry.get("stage") == "done":
        return entry["summary"]
    started = time.perf_counter()
    search = _start(model, space, state, settings, dataset, resources)
    with EndRunsOnFailure(state, search.parent):
        records = collect(_tune(search, resume), search.plan)
        entry["search_seconds"] = time.perf_counter() - started + float(entry.get("search_seconds", 0.0))
        _log_trials(search, records)
        _stop_on_damaged_cache(search, records)
        taught = _teach(search, records)
        best, paper = _choose_best(search, records)
        return _finish(search, records, best, paper, _finals(search, best), started, taught)
