"""PrefetchingBatches: same batches as direct reads, errors surface, the reader thread stops."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from harness.data.base import InMemoryFeatures, RestrictedFeatures, SplitLeakError
from harness.data.sampling import ClassBalancedSampler
from harness.features.loader import PrefetchingBatches
from harness.features.store import CacheKey, FeatureStoreWriter, open_store


def store(tmp_path, values: np.ndarray):
    ident = {**CacheKey("toy", weights="none").as_dict(), "weights_sha256": None, "preprocessing": "t",
             "shape": list(values.shape[1:]), "count": len(values), "command": "x"}
    with FeatureStoreWriter(tmp_path / "c", ident) as writer:
        writer.write_batch(range(len(values)), values)
        writer.finish()
    return open_store(tmp_path / "c")


def _threads() -> int:
    return sum(t.name == "feature-prefetch" for t in threading.enumerate())


@pytest.mark.parametrize("kind", ["store", "memory"])
def test_yields_the_sampler_batches_in_order(tmp_path, kind):
    rng = np.random.default_rng(0)
    values = rng.random((60, 16, 2, 2)).astype(np.float16).astype(np.float32)  # exact in float16
    source = store(tmp_path, values) if kind == "store" else InMemoryFeatures(values)
    labels = np.repeat(np.arange(6), 5)
    image_ids = rng.permutation(60)[:30]  # sampler positions -> image ids, as a split view has them
    batches = list(ClassBalancedSampler(labels, 12, seed=1).epoch())
    seen = []
    for positions, x in PrefetchingBatches(source, iter(batches), "cpu", depth=2, index_of=image_ids):
        np.testing.assert_array_equal(x.numpy(), values[image_ids[positions]].reshape(len(positions), 16, 4))
        seen.append(positions)
    assert len(seen) == len(batches) and all(np.array_equal(a, b) for a, b in zip(seen, batches, strict=True))
    assert _threads() == 0


def test_reader_errors_reach_the_consumer(tmp_path):
    values = np.ones((10, 4, 1, 1), dtype=np.float32)
    source = RestrictedFeatures(InMemoryFeatures(values), np.arange(5))
    batches = [np.array([0, 1]), np.array([2, 7])]
    loader = PrefetchingBatches(source, batches, "cpu")
    it = iter(loader)
    positions, _ = next(it)
    assert positions.tolist() == [0, 1]
    with pytest.raises(SplitLeakError):
        next(it)
    assert _threads() == 0


def test_leaving_the_loop_early_stops_the_reader(tmp_path):
    values = np.zeros((100, 8, 1, 1), dtype=np.float32)
    reader = store(tmp_path, values)

    def endless():
        while True:
            yield np.arange(10)

    for k, _ in enumerate(PrefetchingBatches(reader, endless(), "cpu", depth=3)):
        if k == 4:
            break
    assert _threads() == 0
    with pytest.raises(RuntimeError, match="iterates once"):
        loader = PrefetchingBatches(reader, [np.arange(2)], "cpu")
        list(loader)
        list(loader)


@pytest.mark.parametrize("shards", [1, 3])
def test_requesting_a_batch_ahead_changes_no_batch(tmp_path, shards):
    """The reader asks the kernel for a batch's items before copying them: same batches, same items,
    same order as item-by-item reads, for one environment and for shards read as one."""
    rng = np.random.default_rng(4)
    values = rng.random((90, 64, 7, 7)).astype(np.float16).astype(np.float32)  # overflow pages, as real items
    ident = {**CacheKey("toy", weights="none").as_dict(), "weights_sha256": None, "preprocessing": "t",
             "shape": [64, 7, 7], "count": len(values), "command": "x"}
    for shard in range(shards):
        with FeatureStoreWriter(tmp_path / "c", ident, (shard, shards)) as writer:
            mine = np.arange(shard, len(values), shards)
            writer.write_batch(mine, values[mine])
            writer.finish()
    labels = np.repeat(np.arange(9), 10)
    seen = {}
    for ahead in (True, False):
        reader = open_store(tmp_path / "c")
        reader.request_ahead = ahead
        batches = ClassBalancedSampler(labels, 12, seed=5).epoch()
        seen[ahead] = [(p.copy(), x.numpy().copy()) for p, x in PrefetchingBatches(reader, batches, "cpu")]
        reader.close()
    assert len(seen[True]) == len(seen[False]) > 5
    for (pa, xa), (pb, xb) in zip(seen[True], seen[False], strict=True):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(xa, values[pa].reshape(len(pa), 64, 49))
