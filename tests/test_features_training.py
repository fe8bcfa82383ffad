"""Training DAZLE from the LMDB store gives exactly what training from memory gives."""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.config import TrainConfig
from harness.features.store import CacheKey, FeatureStoreWriter, open_store
from harness.trainer import fit


def test_dazle_trains_from_the_cache_as_from_memory(tiny_synthetic, tmp_path):
    ds = tiny_synthetic
    n = len(ds.features)
    maps = ds.features.read(np.arange(n))  # [N, F, R]
    ident = {**CacheKey("synthetic", weights="none", dtype="float32").as_dict(), "weights_sha256": None,
             "preprocessing": "synthetic", "shape": [maps.shape[1], 7, 7], "count": n, "command": "test"}
    with FeatureStoreWriter(tmp_path / "c", ident) as writer:
        for start in range(0, n, 64):
            writer.write_batch(range(start, min(start + 64, n)), maps[start : start + 64])
        writer.finish()
    cached = dataclasses.replace(ds, features=open_store(tmp_path / "c", {"count": n, "dtype": "float32"}))
    config = TrainConfig(epochs=2, seed=3)
    from_cache = fit(config, cached).metrics
    from_memory = fit(config, ds).metrics
    assert from_cache == from_memory
    assert {"test_H", "test_zsl_top1", "test_ausuc"} & set(from_cache)
