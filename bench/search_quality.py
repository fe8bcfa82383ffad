"""Search efficiency: best validation H against training epochs consumed, per searcher and scheduler.

At an equal budget of training epochs (`--budget-trials` trials' worth of full-length training)
and over `--seeds` search seeds, each method runs the harness's own search (the same trainable,
TunePlan and build_tuner as `python -m harness.search`, MLflow to a temporary SQLite store):

    tpe+asha        Optuna TPE, ASHA ranking trials by val_ausuc at its rungs (the default)
    tpe+asha(H)     the same, ASHA ranking by val_H (the earlier rung metric)
    tpe             TPE, every trial full length
    random+asha     random search with ASHA (val_ausuc rungs)
    random          random search, every trial full length
    paper           the paper's configuration alone (one full-length trial)

Every search starts with the paper's configuration. With ASHA a search proposes up to 4x
`--budget-trials` trials and stops once the epochs its trials have run reach the budget. Epochs
consumed are counted in the order trials were proposed (two run at once, so the order is the
start order); a trial's validation H counts from when its epochs are spent and only if it ran its
full length (H is the selection metric, as in harness.search). The chosen configuration of each
search (best full-length validation H within the budget) is retrained on trainval with
`--final-seeds` seeds and tested once, as harness.search's final stage does.

Prints a Markdown table (median and interquartile range over the seeds of the best validation H
at 25/50/100% of the budget, the epochs TPE+ASHA needed to reach random search's median final best,
the test H of the chosen configurations) and writes the table, a JSON of every curve and a plot to
`--out`. Not in CI: `--datasets synthetic --seeds 5 --epochs 8 --budget-trials 12` (6 arms, 30
searches) took 26.4 min on the shared 2-core machine (docs/search.md has its table).

    python bench/search_quality.py --datasets synthetic --seeds 5 --epochs 10 --budget-trials 20
    python -m harness.search --dataset synthetic --searcher random --scheduler none   # one of the arms
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

from harness import tracking  # noqa: E402
from harness.config import TrainConfig  # noqa: E402
from harness.search.space import resolve_space  # noqa: E402
from harness.trainer import resolve_dataset  # noqa: E402

# label -> (searcher, ASHA rung metric or None for no early stopping)
METHODS = {
    "tpe+asha": ("tpe", "val_ausuc"),
    "tpe+asha(H)": ("tpe", "val_H"),
    "tpe": ("tpe", None),
    "random+asha": ("random", "val_ausuc"),
    "random": ("random", None),
}
FRACTIONS = (0.25, 0.5, 1.0)


def epoch_budget_stopper(budget_passes: int):
    """A Tune Stopper that ends the experiment once its trials have run `budget_passes` passes."""
    from ray import tune

    from harness.search.trial import PASS

    class EpochBudget(tune.Stopper):
        def __init__(self) -> None:
            self.passes: dict[str, int] = {}

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.passes[trial_id] = max(self.passes.get(trial_id, 0), int(result.get(PASS, 0)))
            return False

        def stop_all(self) -> bool:
            return sum(self.passes.values()) >= budget_passes

    return EpochBudget()


def one_search(dataset: str, method: str, seed: int, args: argparse.Namespace, uri: str, exp: str, root: Path):
    """The trial records of one search, in the order they were proposed."""
    from harness.search.trial import TrialContext
    from harness.search.tune import TunePlan, build_tuner, collect

    searcher, rung_metric = METHODS[method]
    data = resolve_dataset(TrainConfig(dataset=dataset))
    space = resolve_space("dazle", int(data.class_attributes.shape[1]))
    base = asdict(TrainConfig(dataset=dataset, stage="search", epochs=args.epochs, seed=seed, num_threads=1))
    name = f"{dataset}-{method.replace('+', '-').replace('(', '-').replace(')', '')}-s{seed}"
    parent = tracking.start_run(uri, exp, name, tags={"kind": "search"})
    ctx = TrialContext(base, uri, exp, parent.run_id, "bench", paper_point=dict(space.defaults),
                       searched=tuple(space.params))
    asha = rung_metric is not None
    budget = args.budget_trials * args.epochs
    plan = TunePlan(space, ctx, root, name, args.budget_trials * (4 if asha else 1), 2, 1.0, 0.0, seed,
                    args.epochs, early_stopping=asha, searcher=searcher, rung_metric=rung_metric or "val_H",
                    stop=epoch_budget_stopper(budget) if asha else None)
    with contextlib.redirect_stdout(sys.stderr):
        results = build_tuner(plan).fit()
    tracking.end_run(parent)
    records = collect(results, plan)
    # A trial the budget stopper ended mid-run is not a full-length one.
    return [replace(r, status="stopped early") if r.status == "completed" and r.iterations < args.epochs else r
            for r in records]


def curve(records, budget: int) -> list[tuple[int, float]]:
    """(epochs consumed, best full-length validation H so far) after each trial, within the budget."""
    spent, best, out = 0, -math.inf, [(0, math.nan)]
    for r in records:
        if spent + r.iterations > budget:
            break
        spent += r.iterations
        if r.status == "completed" and math.isfinite(r.val_H):
            best = max(best, r.val_H)
        out.append((spent, best if best > -math.inf else math.nan))
    return out


def best_at(points: list[tuple[int, float]], epochs: float) -> float:
    values = [h for e, h in points if e <= epochs and math.isfinite(h)]
    return max(values) if values else math.nan


def epochs_to_reach(points: list[tuple[int, float]], target: float) -> float:
    return next((e for e, h in points if math.isfinite(h) and h >= target - 1e-12), math.nan)


def chosen_config(records, budget: int) -> dict | None:
    spent, best = 0, None
    for r in records:
        if spent + r.iterations > budget:
            break
        spent += r.iterations
        if r.status == "completed" and math.isfinite(r.val_H) and (best is None or r.val_H > best.val_H):
            best = r
    return dict(best.params) if best else None


def test_H(dataset: str, params: dict, args: argparse.Namespace, cache: dict) -> float:
    """Mean test H of `params` retrained on trainval with the final seeds (the harness's final stage)."""
    from harness.trainer import fit

    key = (dataset, json.dumps(params, sort_keys=True))
    if key not in cache:
        values = []
        for seed in range(args.final_seeds):
            config = TrainConfig.from_dict({**asdict(TrainConfig(dataset=dataset, stage="final", epochs=args.epochs,
                                                                 seed=seed, num_threads=1)), **params})
            values.append(fit(config).metrics["test_H"])
        cache[key] = float(np.mean(values))
    return cache[key]


def stats(values) -> str:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if not v.size:
        return "-"
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{med:.3f} [{q1:.3f}, {q3:.3f}]"


def plot(curves: dict, budget: int, dataset: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    grid = np.linspace(0, budget, 41)
    for method, per_seed in curves.items():
        if method == "paper":
            continue
        ys = np.asarray([[best_at(c, g) for g in grid] for c in per_seed], dtype=float)
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            med, lo, hi = (np.nanpercentile(ys, q, axis=0) for q in (50, 25, 75))
        line = ax.plot(grid, med, label=method)[0]
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.15)
    paper = [best_at(c, budget) for c in curves.get("paper", [])]
    if paper:
        ax.axhline(float(np.nanmedian(paper)), color="red", linestyle=":", label="paper configuration")
    ax.set_xlabel("training epochs consumed")
    ax.set_ylabel("best validation H (full-length trials)")
    ax.set_title(f"{dataset}: median and IQR over search seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def run_dataset(dataset: str, args: argparse.Namespace, uri: str, exp: str, root: Path) -> tuple[str, dict]:
    budget = args.budget_trials * args.epochs
    curves: dict[str, list] = {m: [] for m in args.methods}
    tests: dict[str, list[float]] = {m: [] for m in args.methods}
    cache: dict = {}
    for seed in range(args.seeds):
        for method in args.methods:
            started = time.perf_counter()
            records = one_search(dataset, method, seed, args, uri, exp, root)
            points = curve(records, budget)
            curves[method].append(points)
            tests[method].append(test_H(dataset, chosen_config(records, budget) or {}, args, cache))
            print(f"{dataset} seed {seed} {method}: {len(records)} trials, best val H {best_at(points, budget):.4f}, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    # The paper configuration alone: the first trial of every full-length search (it is always the paper's).
    paper_curves = [[(0, math.nan), (args.epochs, c[1][1])] for c in curves.get("tpe", curves[args.methods[0]])]
    curves["paper"] = paper_curves
    space = resolve_space("dazle", int(resolve_dataset(TrainConfig(dataset=dataset)).class_attributes.shape[1]))
    tests["paper"] = [test_H(dataset, dict(space.defaults), args, cache)] * args.seeds
    return _table(dataset, curves, tests, budget, args), {"curves": curves, "test_H": tests, "budget": budget}


def _table(dataset: str, curves: dict, tests: dict, budget: int, args: argparse.Namespace) -> str:
    random_final = np.nanmedian([best_at(c, budget) for c in curves.get("random", [])] or [math.nan])
    head = ["method", *[f"best val H at {int(f * 100)}% ({int(f * budget)} ep)" for f in FRACTIONS],
            f"epochs to random's final {random_final:.3f}", "test H of chosen (mean of seeds)"]
    lines = [f"### {dataset}: budget {budget} epochs ({args.budget_trials} trials x {args.epochs} epochs), "
             f"{args.seeds} search seeds, median [IQR]", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, per_seed in curves.items():
        reach = [epochs_to_reach(c, random_final) for c in per_seed]
        reached = [x for x in reach if math.isfinite(x)]
        reach_text = (f"{np.median(reached):.0f} ({len(reached)}/{len(reach)} seeds reach it)" if reached
                      else f"not reached (0/{len(reach)})")
        cells = [stats([best_at(c, f * budget) for c in per_seed]) for f in FRACTIONS]
        lines.append("| " + " | ".join([method, *cells, reach_text, stats(tests[method])]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="synthetic,synthetic-deepfashion")
    p.add_argument("--seeds", type=int, default=5, help="search seeds per method")
    p.add_argument("--epochs", type=int, default=10, help="epochs of a full-length trial")
    p.add_argument("--budget-trials", type=int, default=20, help="budget: this many full-length trials' epochs")
    p.add_argument("--final-seeds", type=int, default=1, help="retrains of each chosen configuration")
    p.add_argument("--methods", default=",".join(METHODS), help=f"some of {', '.join(METHODS)}")
    p.add_argument("--out", default="bench/results/search_quality")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    from harness.cluster import init_ray, shutdown_ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report, data = [], {}
    with tempfile.TemporaryDirectory(prefix="search-quality-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        exp = tracking.experiment_id(uri, "bench/search_quality")
        init_ray(address=None, num_cpus=2, verbose=False)
        try:
            for dataset in args.datasets.split(","):
                text, data[dataset] = run_dataset(dataset, args, uri, exp, Path(tmp))
                report.append(text)
                plot(data[dataset]["curves"], data[dataset]["budget"], dataset, out / f"{dataset}.png")
                print(text, flush=True)
        finally:
            shutdown_ray()
    seconds = time.perf_counter() - started
    footer = (f"command: python bench/search_quality.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
              f"run time: {seconds / 60:.1f} min\n")
    (out / "table.md").write_text("\n".join(report) + "\n" + footer)
    (out / "curves.json").write_text(json.dumps({**data, "seconds": seconds}, default=str))
    print(footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
