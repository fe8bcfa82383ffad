"""The trainer's model interface and the registry of methods (DAZLE and the baselines).

A method is built from a `MethodSpec` (class semantics, word vectors, seen/unseen classes of
the split view, feature shape) and a TrainConfig, and then driven by harness.trainer.fit:
`train_step` on each class-balanced batch, `end_epoch` after each epoch (closed-form methods
solve there), `scores` for evaluation, `save_state`/`load_state` for a checkpoint mid-run (what
a restored trial continues from: the module's and the optimiser's state, tensors and plain
containers only, so it loads with `torch.load(weights_only=True)`). Adding a method = one module, named as the method, that
registers a builder. Importing this package imports no torch: `indexed_methods()` lists the
method modules without importing them (for `--help`); running imports them (`list_methods()`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from harness.config import TrainConfig
from harness.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


@dataclass(frozen=True)
class MethodSpec:
    """What a method may know about the task: never images, never test indices."""

    class_semantics: Tensor  # [C, A] raw class-attribute rows of the view's classes
    attribute_semantics: Tensor  # [A, D] initial word vectors
    seen_classes: Tensor  # local ids
    unseen_classes: Tensor
    feature_dim: int
    num_regions: int


class ZSLMethod(Protocol):
    module: nn.Module  # parameters and buffers: what a checkpoint saves
    default_epochs: int | None  # None: the dataset's default; closed forms need 1
    # Optional attribute `sampling`: "class_balanced" (default, the authors' batches) or
    # "sequential" (every fit image once per epoch, in order: closed forms accumulate sums).

    def train_step(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """One optimisation step on a batch [B, F, R]; returns at least {'loss': ...}."""
        ...

    def end_epoch(self) -> None: ...

    def scores(self, features: Tensor) -> Tensor:
        """[B, C] class scores without any calibration."""
        ...

    def prediction_margin(self) -> Tensor | None:
        """Added to scores before the GZSL arg-max (DAZLE's eq. 13); None for no margin."""
        ...

    def save_state(self) -> dict:
        """Everything the next `train_step` depends on: module, optimiser, running sums, counters."""
        ...

    def load_state(self, state: dict) -> None:
        """Restore `save_state()`'s dict into a method built with the same spec and config."""
        ...


def module_and_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The state of a gradient-trained method: its module's and its optimiser's state dicts."""
    return {"module": module.state_dict(), "optimizer": optimizer.state_dict()}


def load_module_and_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    module.load_state_dict(state["module"])
    optimizer.load_state_dict(state["optimizer"])


Builder = Callable[[MethodSpec, TrainConfig, "torch.device"], ZSLMethod]
_BUILDERS: dict[str, Builder] = {}
_HYPERPARAMETERS: dict[str, tuple[str, ...]] = {}


def register_method(name: str, hyperparameters: tuple[str, ...]) -> Callable[[Builder], Builder]:
    """Register a builder; `hyperparameters` are the TrainConfig fields the method reads."""

    def wrap(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        _HYPERPARAMETERS[name] = hyperparameters
        return fn

    return wrap


def _ensure_registered() -> None:
    """Import every module of this package: each registers its method (one file per method)."""
    for name in indexed_methods():
        importlib.import_module(f"{__name__}.{name}")


def indexed_methods() -> list[str]:
    """The method modules of this package, by name, without importing them (no torch): what
    `--help` lists. A test checks that each module registers the method it is named after."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__))


def list_methods() -> list[str]:
    _ensure_registered()
    return sorted(_BUILDERS)


def method_hyperparameters(name: str) -> tuple[str, ...]:
    _ensure_registered()
    return _HYPERPARAMETERS[name]


def build_method(name: str, spec: MethodSpec, config: TrainConfig, device: torch.device) -> ZSLMethod:
    _ensure_registered()
    if name not in _BUILDERS:
        raise InputError(f"--model: unknown model {name!r}; expected one of {', '.join(list_methods())}")
    return _BUILDERS[name](spec, config, device)


def fixed_epochs(name: str) -> int | None:
    """The epochs a method always trains for whatever --epochs says (ESZSL's closed form: 1), else None."""
    _ensure_registered()
    module = importlib.import_module(f"{__name__}.{name}")
    for value in vars(module).values():
        if isinstance(value, type) and value.__module__ == module.__name__ and getattr(value, "default_epochs", None):
            return int(value.default_epochs)
    return None


def run_params(config: TrainConfig, dataset_epochs: int, searched: tuple[str, ...] = ()) -> dict[str, object]:
    """The MLflow parameters of a run of `config`: common ones, the model's own, the searched ones,
    with `epochs` resolved to what it trains (the method's fixed count, --epochs, or the dataset's)."""
    epochs = fixed_epochs(config.model) or config.epochs or dataset_epochs
    return config.run_params((*method_hyperparameters(config.model), *searched), epochs=epochs)
