"""Feature caches: LMDB store, ResNet-101 extraction, importers of the authors' files, prefetching.

`find_cache(cache_dir, dataset, expect)` is what dataset adapters call; `python -m harness.features`
builds and inspects caches (docs/features.md).
"""

from harness.features.store import (
    CacheKey,
    CacheMismatchError,
    DamagedCacheError,
    FeatureStoreReader,
    IncompleteCacheError,
    default_cache_dir,
    find_cache,
    open_store,
)

__all__ = [
    "CacheKey",
    "CacheMismatchError",
    "DamagedCacheError",
    "FeatureStoreReader",
    "IncompleteCacheError",
    "default_cache_dir",
    "find_cache",
    "open_store",
]
