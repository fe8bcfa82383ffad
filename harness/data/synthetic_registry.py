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


# name -> description; the presets themselves are harness.data.synthetic.PRESETS. The last four are
# shaped like the real datasets (their class counts, splits and attribute counts).
DESCRIPTIONS = {
    "synthetic": "embedded miniature of fine-grained GZSL (32 classes, 24 seen / 8 unseen)",
    "synthetic-tiny": "the synthetic miniature with 10 images per class, for smoke tests",
    "synthetic-deepfashion": "DeepFashion-shaped synthetic stand-in (46 classes, 36 seen / 10 unseen, 336 attributes)",
    "synthetic-cub": "CUB-shaped synthetic stand-in, proposed split (150 seen / 50 unseen, 312 attributes)",
    "synthetic-cub-ss": "synthetic-cub's images and classes with a standard split: other unseen classes (150 / 50), "
                        "as CUB's standard split",
    "synthetic-sun": "SUN-shaped synthetic stand-in (645 seen / 72 unseen, 102 attributes)",
    "synthetic-awa2": "AWA2-shaped synthetic stand-in (40 seen / 10 unseen, 85 attributes)",
}


def _loader(name: str):
    def load(data_seed: int = 0, images_per_class: int | None = None) -> GZSLDataset:
        return _cached(name, data_seed, images_per_class)

    load.__name__ = name.replace("-", "_")
    return load


for _name, _description in DESCRIPTIONS.items():
    register_dataset(_name, _description)(_loader(_name))
