"""Compare models on one dataset: final-stage fits over several seeds, mean +- std of the protocol numbers.

`python -m harness.compare --dataset synthetic --models eszsl,devise,dazle --seeds 3` runs
harness.trainer.fit for every model x seed (trainval -> test, each model at its search-space
DEFAULTS, nothing selected on test) and prints a Markdown table of ZSL T1, acc_s, acc_u, H and
AUSUC in percent, mean +- sample standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import search_spaces
from harness.config import TrainConfig
from harness.data.registry import list_datasets
from harness.errors import InputError, OneLineArgumentParser, run_cli
from harness.methods import indexed_methods, list_methods

# (metric key without the stage prefix, column title)
COLUMNS = (("zsl_top1", "ZSL T1"), ("acc_seen", "acc_s"), ("acc_unseen", "acc_u"), ("H", "H"), ("ausuc", "AUSUC"))
CS_COLUMNS = (("cs_acc_seen", "CS acc_s"), ("cs_acc_unseen", "CS acc_u"), ("cs_H", "CS H"))


def default_hyperparameters(model: str) -> dict[str, object]:
    """The model's search-space DEFAULTS as TrainConfig fields ("all" attributes -> None)."""
    try:
        return search_spaces.load(model).config_defaults()
    except search_spaces.UnknownSearchSpace as err:
        raise InputError(str(err)) from err


@dataclass
class ModelRuns:
    model: str
    hyperparameters: dict[str, object]
    metrics: list[dict[str, float]]  # one per seed, keys without the "test_" prefix
    seconds: list[float]

    def summary(self, key: str) -> tuple[float, float]:
        values = np.array([m[key] for m in self.metrics], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return float(values.mean()), std


def run_comparison(base: TrainConfig, models: list[str], seeds: int, progress: bool = False) -> list[ModelRuns]:
    """fit() for every model x seed on one dataset built once; returns the per-seed metrics."""
    from harness.trainer import fit, resolve_dataset

    dataset = resolve_dataset(base)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(models) * seeds, desc=f"compare {base.dataset}", unit="run", file=sys.stderr,
                   dynamic_ncols=True)
    out = []
    try:
        for model in models:
            hyper = default_hyperparameters(model)
            runs = ModelRuns(model, hyper, [], [])
            for seed in range(seeds):
                config = replace(base, model=model, seed=seed, stage="final", **hyper).validate()
                result = fit(config, dataset)
                runs.metrics.append({k.removeprefix("test_"): v for k, v in result.metrics.items()})
                runs.seconds.append(result.seconds)
                if bar is not None:
                    bar.set_postfix(model=model, seed=seed, H=f"{result.metrics['test_H']:.3f}")
                    bar.update(1)
            out.append(runs)
    finally:
        if bar is not None:
            bar.close()
    return out


def markdown_table(runs: list[ModelRuns], dataset: str, seeds: int) -> str:
    columns = COLUMNS + (CS_COLUMNS if runs and "cs_H" in runs[0].metrics[0] else ())
    header = ["model", *(title for _, title in columns), "s / run"]
    lines = [
        f"GZSL on `{dataset}`, final stage (trainval -> test), {seeds} seed(s): mean +- std in %",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for r in runs:
        cells = [r.model]
        for key, _ in columns:
            mean, std = r.summary(key)
            cells.append(f"{100 * mean:.1f} +- {100 * std:.1f}")
        cells.append(f"{np.mean(r.seconds):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def as_json(runs: list[ModelRuns], dataset: str) -> dict:
    keys = [k for k, _ in COLUMNS + CS_COLUMNS]
    return {
        "dataset": dataset,
        "models": {
            r.model: {
                "hyperparameters": r.hyperparameters,
                "seconds": r.seconds,
                **{k: {"mean": r.summary(k)[0], "std": r.summary(k)[1], "values": [m[k] for m in r.metrics]}
                   for k in keys if k in r.metrics[0]},
            }
            for r in runs
        },
    }


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written table."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m harness.compare",
                                description="Final-stage fits of several models over seeds; a Markdown table.")
    p.add_argument("--dataset", default="synthetic", help=f"one of: {', '.join(list_datasets())}")
    p.add_argument("--models", default="eszsl,devise,dazle", help=f"comma-separated, from: {', '.join(indexed_methods())}")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per model (default 3)")
    p.add_argument("--epochs", type=int, default=None,
                   help="override the dataset's epochs for iterative models (ESZSL always makes one pass)")
    p.add_argument("--calibrated-stacking", action="store_true",
                   help="also report GZSL with a seen-score shift chosen on validation classes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", dest="num_threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--word-vectors", default=None)
    p.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the table to FILE")
    return p


def parse_models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    known = list_methods()
    if not models:
        raise InputError(f"--models: got {text!r}, expected a comma-separated list from {', '.join(known)}")
    unknown = [m for m in models if m not in known]
    if unknown:
        raise InputError(f"--models: unknown model(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    if len(set(models)) != len(models):
        raise InputError(f"--models: {text!r} names a model twice")
    for model in models:
        default_hyperparameters(model)  # a missing search space is bad input too, before any run
    return models


def main(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise InputError(f"--seeds: got {args.seeds}, expected at least 1")
    if args.dataset not in list_datasets():
        raise InputError(f"--dataset: unknown dataset {args.dataset!r}; expected one of {', '.join(list_datasets())}")
    models = parse_models(args.models)
    markdown = Path(args.markdown) if args.markdown else None
    if markdown is not None and not markdown.parent.resolve().is_dir():
        raise InputError(f"--markdown: directory {str(markdown.parent)!r} does not exist")
    base = TrainConfig(
        dataset=args.dataset, epochs=args.epochs, calibrated_stacking=args.calibrated_stacking,
        device=args.device, num_threads=args.num_threads, data_root=args.data_root, cache_dir=args.cache_dir,
        word_vectors=args.word_vectors,
    ).validate()
    started = time.perf_counter()
    runs = run_comparison(base, models, args.seeds, progress=True)
    table = markdown_table(runs, args.dataset, args.seeds)
    wall = time.perf_counter() - started
    print(table, end="")
    print(f"\n{len(models) * args.seeds} runs in {wall:.1f} s")
    if markdown is not None:
        _write_atomically(markdown, table)
    if args.json:
        print(json.dumps({**as_json(runs, args.dataset), "seconds": wall}))
    return 0


def run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_cli(lambda: main(args), "harness.compare")


if __name__ == "__main__":
    sys.exit(run())
