"""Registers the synthetic presets (harness.data.synthetic.PRESETS).

Each loader takes `images_per_class` to shrink the preset for tests (same classes, attributes
and splits rule, fewer images); left at None it generates exactly the preset.
"""

from __future__ import annotations

from functools import lru_cache

from harness.data import synthetic
from harness.data.base import GZSLDataset
from harness.data.catalog import register_dataset


@lru_cache(maxsize=4)
def _cached(name: str, data_seed: int, images_per_class: int | None = None) -> GZSLDataset:
    sizes = {} if images_per_class is None else {"images_per_class": int(images_per_class)}
    return synthetic.load(name, seed=data_seed, **sizes)


@register_dataset("synthetic", "embedded miniature of fine-grained GZSL (32 classes, 24 seen / 8 unseen)")
def synthetic_small(data_seed: int = 0, images_per_class: int | None = None) -> GZSLDataset:
    return _cached("synthetic", data_seed, images_per_class)


@register_dataset("synthetic-tiny", "the synthetic miniature with 10 images per class, for smoke tests")
def synthetic_tiny(data_seed: int = 0, images_per_class: int | None = None) -> GZSLDataset:
    return _cached("synthetic-tiny", data_seed, images_per_class)


@register_dataset(
    "synthetic-deepfashion", "DeepFashion-shaped synthetic stand-in (46 classes, 36 seen / 10 unseen, 336 attributes)"
)
def synthetic_deepfashion(data_seed: int = 0, images_per_class: int | None = None) -> GZSLDataset:
    return _cached("synthetic-deepfashion", data_seed, images_per_class)


# Stand-ins shaped like the real datasets (their class counts, splits and attribute counts).
@register_dataset("synthetic-cub", "CUB-shaped synthetic stand-in, proposed split (150 seen / 50 unseen, "
                                   "312 attributes)")
def synthetic_cub(data_seed: int = 0, images_per_class: int | None = None) -> GZSLDataset:
    return _cached("synthetic-cub", data_seed, images_per_class)


@register_dataset("synthetic-cub-ss", "synthetic-cub's images and classes with a standard split: other unseen "
                                      "classes (150 / 50), as CUB's standard split")
def synthetic_cub_ss(data_seed: int = 0, images_per_class: int | None = None) -> GZSLDataset:
    return _cached("synthetic-cub-ss", data_seed, images_per_class)


@register_dataset("synthetic-sun", "SUN-shaped synthetic stand-in (645 seen / 72 unseen, 102 attributes)")
def synthetic_sun(data_seed: int = 0, images_per_class: int | None = None) -> GZSLDataset:
    return _cached("synthetic-sun", data_seed, images_per_class)


@register_dataset("synthetic-awa2", "AWA2-shaped synthetic stand-in (40 seen / 10 unseen, 85 attributes)")
def synthetic_awa2(data_seed: int = 0, images_per_class: int | None = None) -> GZSLDataset:
    return _cached("synthetic-awa2", data_seed, images_per_class)
