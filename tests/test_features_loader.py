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


def sharded_store(folder, values: np.ndarray, shards: int) -> None:
    ident = {**CacheKey("toy", weights="none").as_dict(), "weights_sha256": None, "preprocessing": "t",
             "shape": list(values.shape[1:]), "count": len(values), "command": "x"}
    for shard in range(shards):
        with FeatureStoreWriter(folder, ident, (shard, shards)) as writer:
            mine = np.arange(shard, len(values), shards)
            for start in range(0, len(mine), 7):  # several transactions, as a build: pages interleave
                writer.write_batch(mine[start:start + 7], values[mine[start:start + 7]])
            writer.finish()


# The read paths: direct (os.preadv at offsets from LMDB's B-tree) and LMDB's lookups, with and
# without requesting a batch's pages ahead.
PATHS = {"direct": {"direct_reads": True}, "lmdb": {"direct_reads": False, "request_ahead": True},
         "lmdb item by item": {"direct_reads": False, "request_ahead": False}}


@pytest.mark.parametrize("shape", [(64, 7, 7), (16, 2, 2)], ids=["overflow pages", "inline values"])
@pytest.mark.parametrize("shards", [1, 3])
def test_every_read_path_gives_the_same_batches(tmp_path, shards, shape):
    """Direct reads, LMDB's lookups with the batch requested ahead, and item by item: the same class-
    balanced batches, same items, same order, bitwise, for one environment and shards read as one,
    for values on overflow pages (real items) and values inside LMDB's leaf pages (tiny ones)."""
    rng = np.random.default_rng(4)
    values = rng.random((90, *shape)).astype(np.float16).astype(np.float32)
    sharded_store(tmp_path / "c", values, shards)
    labels = np.repeat(np.arange(9), 10)
    seen = {}
    for name, settings in PATHS.items():
        reader = open_store(tmp_path / "c")
        for key, value in settings.items():
            setattr(reader, key, value)
        assert reader.read_path == name.split()[0], reader.read_path_reason
        batches = ClassBalancedSampler(labels, 12, seed=5).epoch()
        seen[name] = [(p.copy(), x.numpy().copy()) for p, x in PrefetchingBatches(reader, batches, "cpu")]
        reader.close()
    assert len(seen["direct"]) > 5
    for name in PATHS:
        assert len(seen[name]) == len(seen["direct"])
        for (pa, xa), (pb, xb) in zip(seen["direct"], seen[name], strict=True):
            np.testing.assert_array_equal(pa, pb)
            np.testing.assert_array_equal(xa.view(np.uint32), xb.view(np.uint32))
            np.testing.assert_array_equal(xa, values[pa].reshape(len(pa), shape[0], -1))


def test_the_offset_table_matches_lmdb_for_every_item(tmp_path):
    """Offsets read from the B-tree point at exactly the bytes LMDB returns, for every item."""
    import lmdb

    from harness.features import offsets
    from harness.features.store import item_key

    values = np.random.default_rng(1).random((300, 64, 7, 7)).astype(np.float16)
    sharded_store(tmp_path / "c", values, 1)  # 300 items: a tree of depth 2 (branch, then leaves)
    path = tmp_path / "c" / "shard-0-of-1"
    env = lmdb.open(str(path), readonly=True, lock=False)
    table = offsets.read_table(path / "data.mdb", {**env.stat(), "last_txnid": env.info()["last_txnid"]})
    assert env.stat()["depth"] >= 2 and sorted(table.keys.tolist()) == list(range(300)) and table.overflow.all()
    blob = (path / "data.mdb").read_bytes()
    with env.begin() as txn:
        for key, at, length in zip(table.keys, table.offsets, table.lengths, strict=True):
            assert blob[at:at + length] == txn.get(item_key(int(key)))
    env.close()


def test_without_a_table_the_reader_falls_back_to_lmdb(tmp_path, monkeypatch):
    """Where the table cannot be built (a data format this reader does not know; a machine it does
    not read the layout on), the reader says why and reads through LMDB: the same values."""
    values = np.random.default_rng(2).random((20, 64, 7, 7)).astype(np.float16).astype(np.float32)
    sharded_store(tmp_path / "c", values, 1)
    for patch, why in (("DATA_VERSION", "version 1 (expected 0xbeefc0de version 2)"),
                       ("supported", "(not here)")):
        with monkeypatch.context() as m:
            m.setattr(f"harness.features.offsets.{patch}", 2 if patch == "DATA_VERSION" else (lambda: "not here"))
            with open_store(tmp_path / "c") as reader:
                got = reader.read(np.array([3, 19, 0]))
                assert reader.read_path == "lmdb" and reader.read_path_reason.startswith("reading through LMDB")
                assert reader.read_path_reason.endswith(why) or why in reader.read_path_reason, reader.read_path_reason
        np.testing.assert_array_equal(got, values[[3, 19, 0]].reshape(3, 64, 49))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_resident_features_give_the_loaders_batches(tmp_path, dtype):
    """ResidentFeatures.batches yields what PrefetchingBatches does from the cache: the same positions,
    in the same order, bitwise the same float32 features, for a view's training images only."""
    from harness.features.loader import ResidentFeatures

    rng = np.random.default_rng(6)
    values = rng.random((80, 64, 7, 7)).astype(dtype)
    ident = {**CacheKey("toy", weights="none", dtype=dtype).as_dict(), "weights_sha256": None,
             "preprocessing": "t", "shape": [64, 7, 7], "count": 80, "command": "x"}
    with FeatureStoreWriter(tmp_path / "c", ident) as writer:
        writer.write_batch(range(80), values)
        writer.finish()
    fit = rng.permutation(80)[:50]  # the view's training images (positions -> image ids)
    labels = np.repeat(np.arange(5), 10)
    reader = open_store(tmp_path / "c")
    view = RestrictedFeatures(reader, fit)
    resident = ResidentFeatures(view, fit, "cpu")
    assert resident.data.dtype == getattr(__import__("torch"), dtype) and resident.nbytes == 50 * 64 * 49 * values.itemsize
    got = {}
    for name in ("cache", "resident"):
        batches = ClassBalancedSampler(labels, 10, seed=3).epoch()
        loader = (PrefetchingBatches(view, batches, "cpu", index_of=fit) if name == "cache"
                  else resident.batches(batches, index_of=fit))
        got[name] = [(p.copy(), x.numpy().copy()) for p, x in loader]
    assert len(got["cache"]) == len(got["resident"]) > 3
    for (pa, xa), (pb, xb) in zip(got["cache"], got["resident"], strict=True):
        np.testing.assert_array_equal(pa, pb)
        assert xa.dtype == xb.dtype == np.float32
        np.testing.assert_array_equal(xa.view(np.uint32), xb.view(np.uint32))
    with pytest.raises(KeyError, match="not among the resident"):
        resident.gather(np.setdiff1d(np.arange(80), fit)[:2])
    reader.close()


def test_residency_is_decided_by_the_budget(tmp_path, monkeypatch):
    """The budget: RESIDENT_SHARE of the memory there and of the trial's fraction of the device.
    auto: on CUDA when within it, never on the CPU; on: within 90%; off: never. A refusal is one
    line saying what was needed and what was allowed."""
    import torch

    from harness.features import loader

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * gib, 140 * gib))
    assert loader.resident_fits(29 * gib, "cuda")[0]  # half of 60 GiB free
    fits, why = loader.resident_fits(31 * gib, "cuda")
    assert not fits and "\n" not in why and why.startswith("features not resident on cuda")
    assert "31.00 GiB against 30.00 GiB (50% of cuda's free memory, 60.0 GiB)" in why
    fits, why = loader.resident_fits(9 * gib, "cuda", fraction=0.125)  # 8 trials a GPU: 0.125 x 140 / 2
    assert not fits and "8.75 GiB" in why and "0.125 of the device" in why
    values = np.ones((40, 64, 7, 7), dtype=np.float16)
    source = store(tmp_path, values)
    need = 40 * 64 * 49 * 2
    assert loader.resident_bytes(40, source) == need
    monkeypatch.setattr(loader, "_available_ram", lambda: 3 * need)
    assert loader.resident_fits(need, "cpu")[0] and not loader.resident_fits(need, "cpu", fraction=0.5)[0]
    resident, why = loader.make_resident(source, np.arange(40), "cpu")
    assert resident is None and why.startswith("features read from the cache per batch (resident auto")
    resident, why = loader.make_resident(source, np.arange(40), "cpu", mode="on")
    assert resident is not None and len(resident) == 40 and why.startswith("features resident on cpu")
    assert loader.make_resident(source, np.arange(40), "cpu", mode="off") == (
        None, "features read from the cache per batch (resident off)")
    monkeypatch.setattr(loader, "_available_ram", lambda: need // 2)
    resident, why = loader.make_resident(source, np.arange(40), "cpu", mode="on")
    assert resident is None and "90% of available RAM" in why
    source.close()
