"""The settings of a search: what defines it, their checks, and their resolution from the CLI.

SearchSettings is the one record of a search's options: the driver reads it, the search folder
stores it (search.json), and `--resume` rebuilds it from there, so a resumed search runs with the
options it was started with whatever the new command line says. `settings_from_args` is the one
place CLI values, `--smoke-test` and the defaults meet. It imports neither Ray nor torch, so the
CLI's `--help` and its input checks stay fast.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from typing import Any

from harness import tracking
from harness.config import TrainConfig, absolute
from harness.errors import InputError

PROG = "harness.search"
SEARCHERS = ("tpe", "random")  # harness.search.tune builds them (it imports Ray; this module must not)
SCHEDULERS = ("asha", "none")
SMOKE = {"num_samples": 4, "epochs": 3, "final_seeds": 1}


@dataclass(frozen=True)
class SearchSettings:
    """The options that define a search (stored in the search folder; --resume reuses them)."""

    dataset: str = "synthetic"
    model: str = "dazle"
    num_samples: int = 20
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs (and GPUs) allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    experiment: str = ""  # "": search/<dataset> (tracking.search_experiment)
    seed: int = 0
    final_seeds: int = 3
    epochs: int | None = None  # None: the dataset's default
    reports_per_epoch: int = 1
    max_failures: int = 2
    data_root: str | None = None
    cache_dir: str | None = None
    word_vectors: str | None = None
    data_seed: int = 0
    searcher: str = "tpe"  # "tpe" (Optuna's TPE) or "random"
    scheduler: str = "asha"  # "asha" (early stopping) or "none" (every trial runs its full length)
    smoke_test: bool = False  # --smoke-test: the parent run's name says so
    resident: str = "auto"  # --resident: features held on the trial's device (TrainConfig.resident)

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
        for option, value, allowed in (("searcher", self.searcher, SEARCHERS), ("scheduler", self.scheduler, SCHEDULERS)):
            if value not in allowed:
                raise InputError(f"--{option}: got {value!r}, expected one of {', '.join(allowed)}")
        if not self.experiment.strip():
            return replace(self, experiment=tracking.search_experiment(self.dataset))
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
            resident=self.resident, resident_fraction=self.gpus_per_trial if 0 < self.gpus_per_trial < 1 else 1.0,
            data_root=self.data_root, cache_dir=self.cache_dir, word_vectors=self.word_vectors,
            data_seed=self.data_seed,
        )


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """The settings the command line asks for: given values, else --smoke-test's, else the defaults."""
    d = SearchSettings()
    smoke = SMOKE if args.smoke_test else {}

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else smoke.get(name, default)

    return SearchSettings(
        dataset=args.dataset, model=args.model, num_samples=pick("num_samples", d.num_samples),
        max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        experiment=args.experiment or "", seed=args.seed, final_seeds=pick("final_seeds", d.final_seeds),
        epochs=pick("epochs", None), reports_per_epoch=args.reports_per_epoch, max_failures=args.max_failures,
        data_root=absolute(args.data_root), cache_dir=absolute(args.cache_dir), word_vectors=absolute(args.word_vectors),
        data_seed=args.data_seed,
        searcher=args.searcher, scheduler=args.scheduler, smoke_test=bool(args.smoke_test),
        resident=args.resident,
    ).validate()
