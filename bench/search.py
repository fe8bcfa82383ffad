"""Search throughput: trials per hour of one fixed small search, 1 trial at a time against 2.

The search is the harness's own (the same trainable, MLflow child runs to a temporary SQLite
store, Optuna TPE seeded so both runs draw the same configurations); ASHA is off so every trial
does the same work. One Ray instance is started for both runs; each run's clock covers
Tuner.fit() only (trial actors starting, training, reporting, logging), not ray.init.

Layouts, on a node with C CPUs:
    1 concurrent trial  : cpus_per_trial = C, torch threads = C
    2 concurrent trials : cpus_per_trial = C/2, torch threads = C/2 (1 on 2 cores), reuse_actors

    python bench/search.py                       # 8 trials x 10 epochs on synthetic
    python bench/search.py --trials 12 --epochs 20 --repeats 2

The target on 2 cores is a ratio of at least 1.6 (two small trials overlap each other's Python,
evaluation and logging gaps). On a shared machine, run --repeats 2 or more: the table shows
every repeat and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from harness import tracking  # noqa: E402
from harness.config import TrainConfig  # noqa: E402
from harness.search_cluster import init_ray, shutdown_ray  # noqa: E402
from harness.search_space import resolve_space  # noqa: E402
from harness.train import resolve_dataset  # noqa: E402


def one_search(concurrent: int, cpus: int, args: argparse.Namespace, uri: str, exp: str, root: Path,
               tag: str) -> float:
    """Wall seconds of Tuner.fit() for the fixed search with `concurrent` trials at once."""
    from harness.search_trial import TrialContext
    from harness.search_tune import TunePlan, build_tuner

    dataset = resolve_dataset(TrainConfig(dataset=args.dataset))
    space = resolve_space("dazle", int(dataset.class_attributes.shape[1]))
    per_trial = max(1, cpus // concurrent)
    base = asdict(TrainConfig(dataset=args.dataset, stage="search", epochs=args.epochs, num_threads=per_trial))
    parent = tracking.start_run(uri, exp, f"bench-{tag}", tags={"kind": "search"})
    ctx = TrialContext(base, uri, exp, parent.run_id, "bench", paper_point=dict(space.defaults))
    plan = TunePlan(space, ctx, root, f"bench-{tag}", args.trials, concurrent, float(per_trial), 0.0, args.seed,
                    args.epochs, early_stopping=False)
    tuner = build_tuner(plan)
    started = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - started
    tracking.end_run(parent)
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed, e.g. {errors[0]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cpus", type=int, default=2, help="CPUs the local Ray instance gets")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        exp = tracking.experiment_id(uri, "bench-search")
        init_ray(None, num_cpus=args.cpus)
        times: dict[int, list[float]] = {1: [], 2: []}
        try:
            for rep in range(args.repeats):
                order = (1, 2) if rep % 2 == 0 else (2, 1)  # alternate, so drift in load hits both
                for concurrent in order:
                    seconds = one_search(concurrent, args.cpus, args, uri, exp, root, f"c{concurrent}-r{rep}")
                    times[concurrent].append(seconds)
                    print(f"repeat {rep}: {concurrent} concurrent: {seconds:.1f} s", file=sys.stderr)
        finally:
            shutdown_ray()

    def rate(seconds: float) -> float:
        return args.trials / seconds * 3600

    print(f"fixed search: {args.trials} DAZLE trials x {args.epochs} epochs on {args.dataset}, "
          f"{args.cpus} CPUs, MLflow to SQLite, ASHA off")
    print(f"{'repeat':>8s} {'1 at a time':>16s} {'2 at a time':>16s} {'ratio':>7s}")
    for rep in range(args.repeats):
        one, two = times[1][rep], times[2][rep]
        print(f"{rep:>8d} {rate(one):>11.0f} tr/h {rate(two):>11.0f} tr/h {one / two:>7.2f}")
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"{'median':>8s} {rate(one):>11.0f} tr/h {rate(two):>11.0f} tr/h {one / two:>7.2f}   (target >= 1.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
