"""`python -m harness.search`: hyperparameter search on validation classes, then one test.

For each model: Ray Tune runs trials (harness.trainer.fit, stage "search": train classes against
validation classes, no test image reachable), Optuna's TPE proposes configurations starting from
the paper's, ASHA stops weak ones from their per-epoch validation H. The best configuration is
then retrained on trainval with --final-seeds seeds and evaluated once on test. Everything is
tracked in MLflow (a parent run per model's search, a child run per trial and per final seed)
and the search folder (--storage) lets `--resume` continue after the driver was killed.

This module is the CLI only: the parser, the checks that run before Ray starts, and the loop over
models. The package's modules: settings (the options), space (spaces -> Optuna), trial (the
trainable), tune (Tuner, scheduler, callbacks), driver (one model's search), final (retrain +
test), state (the folder), report (tables), legacy (old module names for old folders);
harness.cluster (Ray), harness.plots, harness.tracking. `--help` imports neither Ray nor torch.

SIGTERM (what Slurm and Kubernetes send on preemption) stops the search as Ctrl+C does, after a
grace period (HARNESS_SIGTERM_GRACE_S, default 10 s) in which every running trial writes a last
checkpoint: the runs are ended KILLED, the search folder is resumable with --resume, and the exit
code is 143 (128 + SIGTERM; Ctrl+C exits 130). A second SIGTERM skips what is left of the grace.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import tracking
from harness.cluster import check_address, check_cluster_capacity, check_local_capacity, ray_session
from harness.config import add_resident_option
from harness.data.registry import list_datasets
from harness.errors import InputError, run_cli
from harness.search.driver import SearchFailed, load_driver_dataset, resolve_models, search_model
from harness.search.report import summary_text
from harness.search.settings import PROG, SCHEDULERS, SEARCHERS, SearchSettings, settings_from_args
from harness.search.space import resolve_space
from harness.search.state import SearchState, check_new_storage, default_storage, latest_storage


def get_args_parser() -> argparse.ArgumentParser:
    d = SearchSettings()
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=d.dataset, help=f"one of: {', '.join(list_datasets())}")
    p.add_argument("--model", default=d.model, help="dazle, eszsl, devise, or all (one search per model)")
    p.add_argument("--num-samples", type=int, default=None, help=f"trials per model (default {d.num_samples})")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what fits the cluster)")
    p.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial)
    p.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial, help="fractions allowed, e.g. 0.25")
    add_resident_option(p)
    p.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT (default: a local instance)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default search/<dataset>)")
    p.add_argument("--storage", default=None, help="search folder (default ./searches/<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the search in --storage (default: the latest)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds TPE, the trials' models and the first final seed")
    p.add_argument("--final-seeds", type=int, default=None, help=f"retrains of the best config (default {d.final_seeds})")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial and final run (default: the dataset's)")
    p.add_argument("--reports-per-epoch", type=int, default=d.reports_per_epoch,
                   help="validation passes per epoch (ASHA rungs) for long epochs such as DeepFashion's")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="retries of a failing trial")
    p.add_argument("--searcher", choices=SEARCHERS, default=d.searcher,
                   help="tpe: Optuna's TPE (default); random: random search (both start from the paper's configuration)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler,
                   help="asha: stop weak trials early (default); none: every trial runs all its epochs")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None, help="feature caches (default $HARNESS_CACHE or ./cache)")
    p.add_argument("--word-vectors", default=None)
    p.add_argument("--data-seed", type=int, default=d.data_seed)
    p.add_argument("--smoke-test", action="store_true", help="a tiny search: 4 trials, 3 epochs, 1 final seed")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    return p


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


EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class SigtermAsInterrupt:
    """SIGTERM handled as Ctrl+C, after a grace period in which running trials write a last checkpoint.

    The handler only starts a thread: the thread asks the trials to checkpoint (a key in Ray's
    store, harness.search.trial.request_stop), waits the grace period, then sends this process
    SIGINT, which Tune (during a search) or Python (otherwise) handle as Ctrl+C. `install()` is
    called again after Ray starts, because ray.init replaces the SIGTERM handler with sys.exit.
    """

    def __init__(self, grace_s: float | None = None) -> None:
        self.grace_s = float(os.environ.get("HARNESS_SIGTERM_GRACE_S", 10.0)) if grace_s is None else grace_s
        self.received = False
        self._skip = threading.Event()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received:
            self._skip.set()  # a second SIGTERM: stop now
            return
        self.received = True
        threading.Thread(target=self._stop, name="sigterm-grace", daemon=True).start()

    def _stop(self) -> None:
        grace = 0.0
        try:
            import ray

            if ray.is_initialized():
                from harness.search.trial import request_stop

                request_stop()
                grace = self.grace_s
        except Exception:  # noqa: BLE001 - no checkpoint request: still stop
            grace = 0.0
        print(f"{PROG}: SIGTERM: stopping" + (f" in {grace:g} s, once the running trials have written a "
              "last checkpoint" if grace else ""), file=sys.stderr, flush=True)
        self._skip.wait(grace)
        os.kill(os.getpid(), signal.SIGINT)


TERM = SigtermAsInterrupt()


def _disk_full() -> tuple[str, int] | None:
    """(folder, free bytes) when harness.search.tune's disk guard stopped the search."""
    tune_module = sys.modules.get("harness.search.tune")
    full = getattr(tune_module, "DISK_FULL", None)
    return next(iter(full.items())) if full else None


def _before_ray(args: argparse.Namespace, settings: SearchSettings, state: SearchState, resume: bool):
    """Every check that needs no Ray: tracking store, cluster address, dataset, models, spaces, capacity."""
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
    return address, dataset, models, spaces


def _resume_hint(settings: SearchSettings, state: SearchState) -> str:
    return f"python -m {PROG} --dataset {settings.dataset} --storage {state.folder} --resume"


def _disk_full_error(settings: SearchSettings, state: SearchState) -> InputError | None:
    """The one line when the disk guard (not the user) stopped the search."""
    full = _disk_full()
    if not full:
        return None
    folder, free = full
    return InputError(
        f"--storage {state.folder}: the disk of {folder} is nearly full ({free / 2**20:.1f} MB free, "
        f"below the {os.environ.get('HARNESS_MIN_FREE_MB', '64')} MB reserve, HARNESS_MIN_FREE_MB); the "
        f"search stopped and its state is kept: free space, then resume with {_resume_hint(settings, state)}")


def _store_error(err: Exception, settings: SearchSettings, state: SearchState) -> InputError | None:
    """The one line for a tracking store that gave up (SQLite locked) or went away; None otherwise."""
    if "database is locked" in str(err) and state.tracking_uri.startswith("sqlite:"):
        return InputError(
            f"--tracking-uri {state.tracking_uri}: SQLite stayed locked after its retries with "
            f"{settings.max_concurrent or 'many'} trials writing at once; use an MLflow server "
            f"(--tracking-uri http://HOST:PORT, docs/cluster.md) or a lower --max-concurrent; the search's "
            f"state is kept: resume with {_resume_hint(settings, state)}")
    if isinstance(err, InputError) or tracking.reachable(state.tracking_uri):
        return None
    return InputError(
        f"--tracking-uri {state.tracking_uri}: the tracking store became unreachable during the search "
        f"({type(err).__name__}); the search's state is kept: once the store is back, resume with "
        f"{_resume_hint(settings, state)}")


def _print_summary(args: argparse.Namespace, settings: SearchSettings, state: SearchState,
                   summaries: list[dict[str, Any]], seconds: float) -> None:
    for summary in summaries:
        print(summary_text(summary))
    print(f"search folder: {state.folder}   (resume: {_resume_hint(settings, state)})")
    print(f"MLflow: {tracking.ui_command(state.tracking_uri, state.experiment_id)}   (experiment {state.experiment!r})")
    print(f"total {seconds:.1f} s")
    if args.json:
        if len(summaries) == 1:
            out = {**summaries[0], "seconds": seconds}
        else:
            out = {"dataset": settings.dataset, "models": {s["model"]: s for s in summaries}, "seconds": seconds}
        out.update(storage=str(state.folder), tracking_uri=state.tracking_uri)
        print(json.dumps(out, default=str))


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    TERM.install()
    settings = settings_from_args(args)
    state, resume = _prepare_state(args, settings)
    if resume:
        settings = SearchSettings(**state.settings).validate()
    address, dataset, models, spaces = _before_ray(args, settings, state, resume)
    summaries: list[dict[str, Any]] = []
    try:
        with ray_session(address, verbose=args.verbose) as resources:
            TERM.install()  # ray.init set its own SIGTERM handler (sys.exit)
            if address:
                check_cluster_capacity(settings, address)
            state.experiment_id = tracking.experiment_id(state.tracking_uri, state.experiment)
            state.save()
            for model in models:
                summaries.append(search_model(model, spaces[model], state, settings, dataset, resources, resume))
    except SearchFailed as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        full = _disk_full_error(settings, state)
        if full is not None:
            raise full from None
        raise
    except Exception as err:
        one_line = _store_error(err, settings, state)
        if one_line is None:
            raise
        raise one_line from err
    _print_summary(args, settings, state, summaries, time.perf_counter() - started)
    return 0


def run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    code = run_cli(lambda: main(args), PROG)
    if TERM.received and code == 130:
        print(f"{PROG}: terminated by SIGTERM (exit {EXIT_SIGTERM}); the search is resumable with --resume",
              file=sys.stderr)
        return EXIT_SIGTERM
    return code


if __name__ == "__main__":
    sys.exit(run())
