"""The table of datasets every CLI resolves `--dataset` through: name -> entry.

A dataset module registers its loader here with `register_dataset` (real_datasets.py,
synthetic_registry.py); registry.py imports those modules and answers every question about the
table. This module imports no dataset module, so registering never makes an import cycle, and
the table itself costs nothing to import (no torch, no scipy): `--help` can list the names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.data.base import GZSLDataset


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset.

    `prepare` is the command that builds a real dataset's feature cache and `stand_in` the
    synthetic dataset to try without its files; both are None for a dataset that reads no files.
    """

    name: str
    loader: Callable[..., GZSLDataset]
    description: str = ""
    stand_in: str | None = None
    prepare: str | None = None

    @property
    def needs_files(self) -> bool:
        return self.prepare is not None


ENTRIES: dict[str, DatasetEntry] = {}


def register_dataset(name: str, description: str = "", *, stand_in: str | None = None,
                     prepare: str | None = None) -> Callable:
    """Decorator: register `fn(**options) -> GZSLDataset` as dataset `name`."""

    def wrap(fn: Callable[..., GZSLDataset]) -> Callable[..., GZSLDataset]:
        ENTRIES[name] = DatasetEntry(name, fn, description, stand_in, prepare)
        return fn

    return wrap
