"""Registers the synthetic presets."""

from __future__ import annotations

from functools import lru_cache

from harness.data import synthetic
from harness.data.base import GZSLDataset
from harness.data.registry import register_dataset


@lru_cache(maxsize=4)
def _cached(name: str, data_seed: int) -> GZSLDataset:
    return synthetic.load(name, seed=data_seed)


@register_dataset("synthetic", "embedded miniature of fine-grained GZSL (32 classes, 24 seen / 8 unseen)")
def synthetic_small(data_seed: int = 0) -> GZSLDataset:
    return _cached("synthetic", data_seed)


@register_dataset(
    "synthetic-deepfashion", "DeepFashion-shaped synthetic stand-in (46 classes, 36 seen / 10 unseen, 336 attributes)"
)
def synthetic_deepfashion(data_seed: int = 0) -> GZSLDataset:
    return _cached("synthetic-deepfashion", data_seed)
