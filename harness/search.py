"""`python -m harness.search`: hyperparameter search on validation classes, then one test.

For each model: Ray Tune runs trials (harness.trainer.fit, stage "search": train classes against
validation classes, no test image reachable), Optuna's TPE proposes configurations starting from
the paper's, ASHA stops weak ones from their per-epoch validation H. The best configuration is
then retrained on trainval with --final-seeds seeds and evaluated once on test. Everything is
tracked in MLflow (a parent run per model's search, a child run per trial and per final seed)
and the search folder (--storage) lets `--resume` continue after the driver was killed.

Modules: search_space (spaces -> Optuna), search_trial (the trainable), search_tune (Tuner,
scheduler, callbacks), search_final (retrain + test), search_state (the folder), harness.cluster
(Ray), search_report (tables), plots, tracking.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import plots, tracking
from harness.cluster import check_address, check_cluster_capacity, check_local_capacity, ray_session
from harness.config import TrainConfig
from harness.data.registry import list_datasets
from harness.errors import InputError, run_cli
from harness.search_report import param_name, summary_text, trial_rows, write_table
from harness.search_space import ResolvedSpace, has_space, resolve_space
from harness.search_state import SearchState, check_new_storage, default_storage, latest_storage

PROG = "harness.search"


@dataclass(frozen=True)
class SearchSettings:
    """The options that define a search (stored in the search folder; --resume reuses them)."""

    dataset: str = "synthetic"
    model: str = "dazle"
    num_samples: int = 20
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs (and GPUs) allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    experiment: str = tracking.DEFAULT_EXPERIMENT
    seed: int = 0
    final_seeds: int = 3
    epochs: int | None = None  # None: the dataset's default
    reports_per_epoch: int = 1
    max_failures: int = 2
    data_root: str | None = None
    cache_dir: str | None = None
    word_vectors: str | None = None
    data_seed: int = 0

    def validate(self) -> SearchSettings:
        checks = [
            ("num-samples", self.num_samples >= 1, "at least 1"),
            ("max-concurrent", self.max_concurrent is None or self.max_concurrent >= 1, "at least 1"),
            ("cpus-per-trial", self.cpus_per_trial > 0, "a positive number of CPUs"),
            ("gpus-per-trial", self.gpus_per_trial >= 0, "0 or a positive (fractional) number of GPUs"),
            ("final-seeds", self.final_seeds >= 0, "0 or more"),
            ("epochs", self.epochs is None or self.epochs >= 1, "at least 1"),
            ("reports-per-epoch", self.reports_per_epoch >= 1, "at least 1"),
            ("max-failures", self.max_failures >= 0, "0 or more"),
        ]
        for option, ok, expected in checks:
            if not ok:
                value = getattr(self, option.replace("-", "_"))
                raise InputError(f"--{option}: got {value!r}, expected {expected}")
        if not self.experiment.strip():
            raise InputError("--experiment: expected a non-empty experiment name")
        return self

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    @property
    def num_threads(self) -> int:
        """torch threads per trial: the CPUs it was given (at least one), never the whole node."""
        return max(1, int(math.floor(self.cpus_per_trial)))

    def base_config(self, model: str, stage: str, seed: int) -> TrainConfig:
        return TrainConfig(
            dataset=self.dataset, model=model, stage=stage, seed=seed, epochs=self.epochs,
            reports_per_epoch=self.reports_per_epoch, device=self.device, num_threads=self.num_threads,
            data_root=self.data_root, cache_dir=self.cache_dir, word_vectors=self.word_vectors,
            data_seed=self.data_seed,
        )


# ---------------------------------------------------------------- CLI


SMOKE = {"num_samples": 4, "epochs": 3, "final_seeds": 1}


def get_args_parser() -> argparse.ArgumentParser:
    d = SearchSettings()
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=d.dataset, help=f"one of: {', '.join(list_datasets())}")
    p.add_argument("--model", default=d.model, help="dazle, eszsl, devise, or all (one search per model)")
    p.add_argument("--num-samples", type=int, default=None, help=f"trials per model (default {d.num_samples})")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what fits the cluster)")
    p.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial)
    p.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial, help="fractions allowed, e.g. 0.25")
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT (default: a local instance)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")
    p.add_argument("--storage", default=None, help="search folder (default ./searches/<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the search in --storage (default: the latest)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds TPE, the trials' models and the first final seed")
    p.add_argument("--final-seeds", type=int, default=None, help=f"retrains of the best config (default {d.final_seeds})")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial and final run (default: the dataset's)")
    p.add_argument("--reports-per-epoch", type=int, default=d.reports_per_epoch,
                   help="validation passes per epoch (ASHA rungs) for long epochs such as DeepFashion's")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="retries of a failing trial")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None, help="feature caches (default $HARNESS_CACHE or ./cache)")
    p.add_argument("--word-vectors", default=None)
    p.add_argument("--data-seed", type=int, default=d.data_seed)
    p.add_argument("--smoke-test", action="store_true", help="a tiny search: 4 trials, 3 epochs, 1 final seed")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    return p


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    d = SearchSettings()
    smoke = SMOKE if args.smoke_test else {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else smoke.get(name, default)

    return SearchSettings(
        dataset=args.dataset, model=args.model, num_samples=pick("num_samples", d.num_samples),
        max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        experiment=args.experiment, seed=args.seed, final_seeds=pick("final_seeds", d.final_seeds),
        epochs=pick("epochs", None), reports_per_epoch=args.reports_per_epoch, max_failures=args.max_failures,
        data_root=args.data_root, cache_dir=args.cache_dir, word_vectors=args.word_vectors, data_seed=args.data_seed,
    ).validate()


def resolve_models(model: str) -> list[str]:
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
    """Load the dataset once on the driver: bad names or paths fail here, before any trial."""
    from harness.trainer import resolve_dataset

    return resolve_dataset(settings.base_config(settings.model if settings.model != "all" else "dazle", "search", 0))


# ---------------------------------------------------------------- one model's search


def _max_concurrent(settings: SearchSettings, resources: dict[str, float]) -> int:
    if settings.max_concurrent:
        return settings.max_concurrent
    slots = int(resources.get("CPU", 1) // settings.cpus_per_trial)
    if settings.gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0) // settings.gpus_per_trial))
    return max(1, min(slots, settings.num_samples))


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
    params = {**{k: v for k, v in asdict(settings).items() if k not in ("model", "data_root", "cache_dir")},
              "model": model, **plan_info,
              "search_space": json.dumps(space.params, sort_keys=True),
              "paper_config": json.dumps({param_name(k): v for k, v in space.defaults.items()}, sort_keys=True)}
    tags = {"kind": "search", "dataset": settings.dataset, "model": model, "storage": str(state.folder),
            "feature_cache_id": dataset.feature_cache_id}
    ref = tracking.start_run(uri, exp, f"search-{model}-{settings.dataset}", params, tags)
    entry.update(parent_run_id=ref.run_id, stage="searching")
    state.save()
    return ref


def _param_plots(records, space: ResolvedSpace, folder: Path) -> list[Path]:
    """Validation H against each searched hyperparameter (lambda and k for DAZLE), all trials."""
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


def search_model(model: str, space: ResolvedSpace, state: SearchState, settings: SearchSettings, dataset,
                 resources: dict[str, float], resume: bool) -> dict[str, Any]:
    from harness.search_final import FinalJob, run_finals, summarize
    from harness.search_report import final_rows
    from harness.search_trial import TrialContext
    from harness.search_tune import TunePlan, best_trial, build_tuner, collect, grace_period, restore_tuner

    entry = state.model(model)
    if entry.get("stage") == "done":
        return entry["summary"]
    started = time.perf_counter()
    epochs = settings.epochs or dataset.default_epochs
    max_t = epochs * settings.reports_per_epoch
    concurrent = _max_concurrent(settings, resources)
    plan_info = {"max_concurrent": concurrent, "scheduler": "ASHA", "searcher": "OptunaSearch(TPE)",
                 "asha_max_t": max_t, "asha_grace_period": grace_period(max_t)}
    parent = _open_parent(state, model, space, settings, plan_info, dataset)
    commit = tracking.git_commit()
    base = asdict(settings.base_config(model, "search", settings.seed))
    ctx = TrialContext(base, state.tracking_uri, state.experiment_id, parent.run_id, commit,
                       paper_point=dict(space.defaults), search_name=state.folder.name)
    plan = TunePlan(space, ctx, state.folder, model, settings.num_samples, concurrent, settings.cpus_per_trial,
                    settings.gpus_per_trial, settings.seed, max_t, settings.max_failures)
    try:
        tuner = restore_tuner(plan) if resume else None
        if tuner is not None and entry.get("stage") == "final":
            results = tuner.get_results()  # the search had ended; only the finals were cut off
        else:
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
        records = collect(results, plan)
        search_seconds = time.perf_counter() - started + float(entry.get("search_seconds", 0.0))
        entry["search_seconds"] = search_seconds

        results_dir = state.results_dir(model)
        params = list(space.params)
        table = write_table(trial_rows(records, params), results_dir, "trials")
        for path in [*table, *_param_plots(records, space, results_dir)]:
            tracking.log_artifact(parent, path, "tables" if path.suffix in (".csv", ".md") else "plots")
        best = best_trial(records)
        paper = next((r for r in records if r.paper), None)
        counts: dict[str, int] = {}
        for r in records:
            counts[r.status] = counts.get(r.status, 0) + 1
        if best is None:
            tracking.set_tags(parent, {"error": "no trial completed"})
            tracking.end_run(parent, "FAILED")
            raise SearchFailed(f"{model}: no trial of {len(records)} completed; see {results_dir / 'trials.md'}")
        tracking.log_metrics(parent, {"best_val_H": best.val_H,
                                      "paper_config_val_H": paper.val_H if paper else math.nan})
        tracking.set_tags(parent, {"best_trial": best.trial_id})
        entry.update(stage="final", best_trial=best.trial_id)
        state.save()

        final_results: list[dict[str, Any]] = []
        if settings.final_seeds:
            jobs = []
            for i in range(settings.final_seeds):
                final = settings.base_config(model, "final", settings.seed + i)
                values = {**asdict(final), **best.params}
                jobs.append(FinalJob(values, state.tracking_uri, state.experiment_id, parent.run_id, commit,
                                     state.folder.name, best.trial_id))
            final_results = run_finals(jobs, settings.cpus_per_trial, settings.gpus_per_trial)
        test = summarize(final_results)
        for path in write_table(final_rows(final_results, test), results_dir, "final"):
            tracking.log_artifact(parent, path, "tables")
        tracking.log_metrics(parent, {f"{k}_mean": v["mean"] for k, v in test.items()})
        tracking.log_metrics(parent, {f"{k}_std": v["std"] for k, v in test.items()})
        summary = {
            "dataset": settings.dataset, "model": model, "best_config": best.params, "best_trial": best.trial_id,
            "best_val_H": best.val_H, "paper_config": dict(space.defaults),
            "paper_config_val_H": paper.val_H if paper else None,
            "test": test, "final_runs": final_results, "trial_counts": counts,
            "search_seconds": search_seconds, "seconds": time.perf_counter() - started,
            "parent_run_id": parent.run_id, "experiment_id": state.experiment_id,
            "results_dir": str(results_dir),
        }
        tracking.log_json(parent, summary, "summary.json", "tables")
        (results_dir / "summary.md").write_text(summary_text(summary) + "\n")
        tracking.end_run(parent, "FINISHED")
        entry.update(stage="done", summary=summary)
        state.save()
        return summary
    except BaseException as err:
        # Leave nothing RUNNING: the parent and any child a dying worker could not end. The store
        # itself may be what failed: then a resumed search ends them (end_orphans on resume).
        try:
            tracking.end_orphans(state.tracking_uri, state.experiment_id, parent.run_id,
                                 reason=f"search stopped: {type(err).__name__}")
            if not isinstance(err, SearchFailed) and tracking.run_status(parent) == "RUNNING":
                status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
                tracking.set_tags(parent, {"error": f"{type(err).__name__}: {err}"[:5000]})
                tracking.end_run(parent, status)
        except Exception:  # the original error is what the user must see
            pass
        raise


class SearchFailed(RuntimeError):
    """No trial of a model's search completed (every one failed or diverged)."""


# ---------------------------------------------------------------- main


def _prepare_state(args: argparse.Namespace, settings: SearchSettings) -> tuple[SearchState, bool]:
    """The search folder: a new one (refusing to overwrite) or the one to resume."""
    if args.resume:
        folder = Path(args.storage).expanduser().resolve() if args.storage else latest_storage(settings.dataset)
        state = SearchState.load(folder)
        if args.tracking_uri and args.tracking_uri != state.tracking_uri:
            raise InputError(f"--tracking-uri {args.tracking_uri}: this search logs to {state.tracking_uri}; "
                             "a resumed search must use the same store")
        return state, True
    folder = Path(args.storage).expanduser().resolve() if args.storage else default_storage(settings.dataset)
    check_new_storage(folder)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    return SearchState(folder, asdict(settings), uri, settings.experiment), False


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    settings = settings_from_args(args)
    state, resume = _prepare_state(args, settings)
    if resume:
        settings = SearchSettings(**state.settings).validate()
    tracking.check_tracking(state.tracking_uri)
    address = check_address(args.address) if args.address else None
    dataset = load_driver_dataset(settings)
    models = resolve_models(settings.model)
    num_attributes = int(dataset.class_attributes.shape[1])
    spaces = {model: resolve_space(model, num_attributes) for model in models}  # a bad space fails here
    if address is None:
        check_local_capacity(settings)
    if address and state.tracking_uri.startswith("sqlite:"):
        print(f"{PROG}: warning: trials on other nodes write to {state.tracking_uri}; that path must be "
              "shared by every node (or use an MLflow server with --tracking-uri http://...)", file=sys.stderr)
    print(f"{PROG}: search folder {state.folder}" + (" (resuming)" if resume else ""), file=sys.stderr)
    summaries: list[dict[str, Any]] = []
    try:
        with ray_session(address, verbose=args.verbose) as resources:
            if address:
                check_cluster_capacity(settings, address)
            state.experiment_id = tracking.experiment_id(state.tracking_uri, state.experiment)
            state.save()
            for model in models:
                summaries.append(search_model(model, spaces[model], state, settings, dataset, resources, resume))
    except SearchFailed as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if isinstance(err, InputError) or tracking.reachable(state.tracking_uri):
            raise
        raise InputError(
            f"--tracking-uri {state.tracking_uri}: the tracking store became unreachable during the search "
            f"({type(err).__name__}); the search's state is kept: once the store is back, resume with "
            f"python -m {PROG} --dataset {settings.dataset} --storage {state.folder} --resume"
        ) from err
    seconds = time.perf_counter() - started
    for summary in summaries:
        print(summary_text(summary))
    print(f"search folder: {state.folder}   (resume: python -m {PROG} --dataset {settings.dataset} "
          f"--storage {state.folder} --resume)")
    print(f"MLflow: {tracking.ui_command(state.tracking_uri)}   (experiment {state.experiment!r})")
    print(f"total {seconds:.1f} s")
    if args.json:
        if len(summaries) == 1:
            out = {**summaries[0], "seconds": seconds}
        else:
            out = {"dataset": settings.dataset, "models": {s["model"]: s for s in summaries}, "seconds": seconds}
        out.update(storage=str(state.folder), tracking_uri=state.tracking_uri)
        print(json.dumps(out, default=str))
    return 0


def run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_cli(lambda: main(args), PROG)


if __name__ == "__main__":
    sys.exit(run())
