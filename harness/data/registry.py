"""Dataset registry: every CLI resolves --dataset through here.

A dataset module registers a loader `fn(**options) -> GZSLDataset` under one or more names.
Real datasets need files (`data_root`, `cache_dir`, ...); `synthetic*` need nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.data.base import GZSLDataset
from harness.errors import InputError

_LOADERS: dict[str, Callable[..., GZSLDataset]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_dataset(name: str, description: str = "") -> Callable:
    def wrap(fn: Callable[..., GZSLDataset]) -> Callable[..., GZSLDataset]:
        _LOADERS[name] = fn
        _DESCRIPTIONS[name] = description
        return fn

    return wrap


class UnknownDatasetError(InputError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _ensure_registered() -> None:
    # Importing the adapter modules registers them; real-data adapters are optional extras.
    import harness.data.synthetic_registry  # noqa: F401

    try:
        import harness.data.adapters  # noqa: F401
    except ImportError:
        pass


def list_datasets() -> list[str]:
    _ensure_registered()
    return sorted(_LOADERS)


def describe(name: str) -> str:
    _ensure_registered()
    return _DESCRIPTIONS.get(name, "")


def load_dataset(name: str, **options) -> GZSLDataset:
    """Build the dataset `name`; options a loader does not take are ignored."""
    _ensure_registered()
    if name not in _LOADERS:
        raise UnknownDatasetError(f"--dataset: unknown dataset {name!r}; expected one of {', '.join(list_datasets())}")
    fn = _LOADERS[name]
    import inspect

    params = inspect.signature(fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    return fn(**options)
