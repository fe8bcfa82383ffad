"""`python -m harness.train`: train and evaluate one model once (the command line of harness.trainer.fit).

The parser imports neither torch nor Ray, so `--help` and bad options answer at once; the trainer
is imported after the arguments are read.
"""

from __future__ import annotations

import argparse
import json
import sys

from harness.config import VARIANTS, TrainConfig, add_resident_option
from harness.data.registry import list_datasets
from harness.errors import OneLineArgumentParser, run_cli
from harness.methods import indexed_methods


def get_args_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = OneLineArgumentParser(prog="python -m harness.train", description="Train and evaluate one model once.")
    p.add_argument("--dataset", default=d.dataset, help=f"one of: {', '.join(list_datasets())}")
    p.add_argument("--model", default=d.model, help=f"one of: {', '.join(indexed_methods())}")
    p.add_argument("--stage", choices=["search", "final"], default=d.stage,
                   help="final: trainval -> test (default); search: train classes -> validation classes")
    p.add_argument("--variant", default="full", help=f"DAZLE ablation: {', '.join(VARIANTS)}")
    # Hyperparameters default to None here: unset ones come from the model's search-space defaults.
    p.add_argument("--lambda", dest="lam", type=float, default=None, help=f"DAZLE lambda (default {d.lam})")
    p.add_argument("--num-attributes", type=int, default=None, help="k lowest-entropy attributes (default all)")
    p.add_argument("--lr", type=float, default=None, help="default: the model's (DAZLE 1e-4)")
    p.add_argument("--epochs", type=int, default=None, help="default: the dataset's (paper) setting")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eszsl-gamma", type=float, default=None)
    p.add_argument("--eszsl-lambda", type=float, default=None)
    p.add_argument("--margin", type=float, default=None, help="DeViSE hinge margin")
    p.add_argument("--calibrated-stacking", action="store_true",
                   help="also report GZSL with a seen-score shift chosen on validation classes")
    p.add_argument("--device", default=d.device)
    p.add_argument("--amp", choices=["none", "bf16"], default=d.amp, help="bf16 autocast (GPU)")
    add_resident_option(p)
    p.add_argument("--threads", dest="num_threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None, help="feature caches (default $HARNESS_CACHE or ./cache)")
    p.add_argument("--word-vectors", default=None, help="GloVe/word2vec text or binary, or .npz of vectors")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON on the last line")
    return p


HYPERPARAMETER_OPTIONS = ("lr", "lam", "num_attributes", "eszsl_gamma", "eszsl_lambda", "margin")


def model_defaults(model: str) -> dict[str, object]:
    """The model's paper/search-space defaults (e.g. DeViSE's own lr), as TrainConfig fields."""
    import search_spaces

    if not search_spaces.exists(model):
        return {}
    return search_spaces.load(model).config_defaults()


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    hyper = model_defaults(args.model)
    hyper.update({k: getattr(args, k) for k in HYPERPARAMETER_OPTIONS if getattr(args, k) is not None})
    config = TrainConfig(
        dataset=args.dataset, model=args.model, stage=args.stage, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, **hyper,
        calibrated_stacking=args.calibrated_stacking, device=args.device, amp=args.amp, resident=args.resident, num_threads=args.num_threads,
        data_root=args.data_root, cache_dir=args.cache_dir, word_vectors=args.word_vectors,
    )
    return config.with_variant(args.variant).validate()


def main(args: argparse.Namespace) -> int:
    from harness.data.registry import load_or_explain
    from harness.trainer import DivergenceError, fit

    config = config_from_args(args)
    dataset = load_or_explain(config.dataset, data_root=config.data_root, cache_dir=config.cache_dir,
                              word_vectors=config.word_vectors, data_seed=config.data_seed)
    try:
        result = fit(config, dataset, progress=True)
    except DivergenceError as err:
        print(f"harness.train: error: training diverged: {err} (--lr {config.lr:g}); "
              "expected a finite loss: lower --lr", file=sys.stderr)
        return 1
    short = {k.removeprefix("test_").removeprefix("val_"): v for k, v in result.metrics.items()}
    print(f"{config.model} on {config.dataset} ({config.stage} stage, seed {config.seed}, {result.seconds:.1f} s)")
    for key, value in result.metrics.items():
        print(f"  {key:28s} {value:.4f}")
    if args.json:
        print(json.dumps({**short, **result.metrics, "seconds": result.seconds}))
    return 0


def run(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_cli(lambda: main(args), "harness.train")


if __name__ == "__main__":
    sys.exit(run())
