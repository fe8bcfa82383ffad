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
    # Importing the adapter modules registers them.
    import harness.data.adapters  # noqa: F401
    import harness.data.synthetic_registry  # noqa: F401


def list_datasets() -> list[str]:
    _ensure_registered()
    return sorted(_LOADERS)


def describe(name: str) -> str:
    _ensure_registered()
    return _DESCRIPTIONS.get(name, "")


# Real datasets take tens of seconds to parse (DeepFashion's attribute file); a search runs many
# trials per worker process, so the last few loads are kept per process.
_LOADED: dict[tuple, GZSLDataset] = {}
_KEEP = 2


def load_dataset(name: str, **options) -> GZSLDataset:
    """Build the dataset `name` (memoised per process); options a loader does not take are ignored."""
    _ensure_registered()
    if name not in _LOADERS:
        raise UnknownDatasetError(f"--dataset: unknown dataset {name!r}; expected one of {', '.join(list_datasets())}")
    fn = _LOADERS[name]
    import inspect

    params = inspect.signature(fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key not in _LOADED:
        while len(_LOADED) >= _KEEP:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = fn(**options)
    return _LOADED[key]
