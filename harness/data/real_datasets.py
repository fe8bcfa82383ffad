"""Registers the real datasets: cub, sun, awa2, cub-ss (xlsa17) and deepfashion.

Each entry also says how to build its feature cache and which synthetic dataset stands in for
it when its files are missing (registry.missing_data_message). The loaders import the adapters
when called, so listing the names reads no .mat file reader.
"""

from __future__ import annotations

from harness.data.base import GZSLDataset
from harness.data.catalog import register_dataset

_EXTRACT = "python -m harness.features extract --dataset {} --data-root DIR"


def _register(name: str, description: str, stand_in: str, cache_name: str | None = None) -> None:
    @register_dataset(name, description, stand_in=stand_in, prepare=_EXTRACT.format(cache_name or name))
    def loader(data_root: str | None = None, cache_dir: str | None = None, word_vectors: str | None = None,
               data_seed: int = 0) -> GZSLDataset:
        from harness.data import adapters

        return adapters.load(name, data_root, cache_dir, word_vectors, data_seed)


# Each stand-in has its dataset's class counts, splits and attribute count (harness/data/synthetic.py).
_register("cub", "CUB-200-2011, xlsa17 proposed split (150 seen / 50 unseen, 312 attributes)", "synthetic-cub")
_register("sun", "SUN attributes, xlsa17 proposed split (645 seen / 72 unseen, 102 attributes)", "synthetic-sun")
_register("awa2", "Animals with Attributes 2, xlsa17 proposed split (40 seen / 10 unseen, 85 attributes)",
          "synthetic-awa2")
# cub-ss reads cub's images in cub's order, so cub's cache serves it.
_register("cub-ss", "CUB-200-2011, standard split (150 / 50, ZSL only: no test-seen images)", "synthetic-cub-ss",
          cache_name="cub")
_register("deepfashion", "DeepFashion category/attribute benchmark (36 seen / 10 unseen, 1000 attributes)",
          "synthetic-deepfashion")
