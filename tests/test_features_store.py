"""The LMDB feature store: round trip, metadata checks, shards, atomicity under SIGKILL, info --verify."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from lmdb_probe import stored_items

from harness.errors import InputError
from harness.features.__main__ import run as features_cli
from harness.features.info import open_for_info, verify
from harness.features.store import (
    CacheKey,
    CacheMismatchError,
    FeatureStoreWriter,
    IncompleteCacheError,
    default_cache_dir,
    find_cache,
    item_key,
    open_store,
)

ROOT = Path(__file__).resolve().parents[1]


def identity(count: int, dataset: str = "toy", shape=(8, 2, 3), **overrides) -> dict:
    key = CacheKey(dataset, weights=overrides.pop("weights", "none"), dtype=overrides.pop("dtype", "float16"))
    return {**key.as_dict(), "weights_sha256": None, "preprocessing": "test", "shape": list(shape),
            "count": count, "command": f"python -m harness.features extract --dataset {dataset} --data-root D",
            **overrides}


def maps(count: int, shape=(8, 2, 3), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((count, *shape)), 0).astype(np.float32)


def build(root: Path, values: np.ndarray, batch: int = 4, shard=(0, 1), **overrides) -> Path:
    ident = identity(len(values), shape=values.shape[1:], **overrides)
    folder = root / CacheKey(ident["dataset"], ident["backbone"], ident["weights"], ident["image_size"],
                             ident["dtype"]).folder_name()
    with FeatureStoreWriter(folder, ident, shard) as writer:
        mine = np.arange(shard[0], len(values), shard[1])
        for start in range(0, len(mine), batch):
            idx = mine[start : start + batch]
            writer.write_batch(idx, values[idx])
        writer.finish()
    return folder


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_in_index_order(tmp_path, dtype):
    values = maps(11)
    folder = build(tmp_path, values, dtype=dtype)
    reader = open_store(folder)
    assert len(reader) == 11 and reader.feature_dim == 8 and reader.num_regions == 6
    order = np.array([7, 0, 10, 3, 3])
    got = reader.read(order)
    assert got.dtype == np.float32 and got.shape == (5, 8, 6)
    tol = 1e-2 if dtype == "float16" else 0
    np.testing.assert_allclose(got, values[order].reshape(5, 8, 6), atol=tol, rtol=tol)
    out = torch.full((6, 8, 6), -1.0)
    reader.read_into(order[:2], out)
    np.testing.assert_array_equal(out[:2].numpy(), got[:2])
    assert (out[2:] == -1).all()  # rows past the batch untouched
    half = torch.empty((2, 8, 6), dtype=torch.float16)
    reader.read_into(order[:2], half)
    np.testing.assert_allclose(half.float().numpy(), got[:2], atol=1e-6 if dtype == "float16" else 1e-2)
    meta = reader.metadata
    for field in ("backbone", "weights", "weights_sha256", "preprocessing", "shape", "dtype", "count",
                  "build_time", "version", "command"):
        assert field in meta, field
    assert meta["dtype"] == dtype and meta["count"] == 11 and meta["complete"] is True
    assert reader.cache_id == "toy__resnet101__none__224__" + dtype
    with pytest.raises(IndexError):
        reader.read(np.array([11]))


def test_reader_refuses_other_settings_naming_each_field(tmp_path):
    folder = build(tmp_path, maps(3))
    with pytest.raises(CacheMismatchError) as err:
        open_store(folder, expect={"weights": "imagenet", "dtype": "float32", "backbone": "resnet101"})
    message = str(err.value)
    assert isinstance(err.value, InputError) and "\n" not in message
    assert "weights is 'none' (asked for 'imagenet')" in message
    assert "dtype is 'float16' (asked for 'float32')" in message
    assert "backbone is" not in message  # fields that match are not named
    assert message.endswith("build the cache you asked for with: python -m harness.features extract --dataset toy "
                            "--data-root DIR --weights imagenet --dtype float32")
    with pytest.raises(CacheMismatchError, match="count is 3 .asked for 4."):
        open_store(folder, expect={"count": 4})
    assert len(open_store(folder, expect={"count": 3, "dataset": "toy"})) == 3


def test_incomplete_cache_is_refused_naming_the_command(tmp_path):
    values = maps(5)
    ident = identity(5)
    folder = tmp_path / "c"
    with FeatureStoreWriter(folder, ident) as writer:
        writer.write_batch([0, 1, 2], values[:3])
    with pytest.raises(IncompleteCacheError) as err:
        open_store(folder)
    assert "3 of 5 items" in str(err.value)
    assert "python -m harness.features extract --dataset toy --data-root D" in str(err.value)
    # a re-run resumes: only the missing items are written
    with FeatureStoreWriter(folder, ident) as writer:
        assert writer.present().tolist() == [0, 1, 2]
        writer.write_batch([3, 4], values[3:])
        assert writer.finish()["complete"]
    np.testing.assert_allclose(open_store(folder).read(np.arange(5)), values.reshape(5, 8, 6), atol=1e-2)


def test_shards_read_as_one_and_a_missing_shard_is_named(tmp_path):
    values = maps(9)
    folder = build(tmp_path, values, shard=(0, 3))
    with pytest.raises(IncompleteCacheError, match=r"--shard 1/3 ; .*--shard 2/3"):
        open_store(folder)
    build(tmp_path, values, shard=(2, 3))
    build(tmp_path, values, shard=(1, 3))
    reader = open_store(folder)
    assert [p.name for p in reader.shard_dirs] == ["shard-0-of-3", "shard-1-of-3", "shard-2-of-3"]
    order = np.array([8, 4, 0, 5, 1])
    np.testing.assert_allclose(reader.read(order), values[order].reshape(5, 8, 6), atol=1e-2)
    assert reader.duplicates == 0 and reader.stored == 9
    # a shard that disagrees with the others is refused
    with pytest.raises(CacheMismatchError):
        FeatureStoreWriter(folder, identity(9, shape=(8, 2, 3), preprocessing="other"), (0, 3))


def test_map_grows_as_needed(tmp_path):
    values = maps(40, shape=(512, 7, 7))  # 50 KB an item, 2 MB in all, a 1 MB map to start
    ident = identity(40, shape=(512, 7, 7))
    with FeatureStoreWriter(tmp_path / "c", ident, map_size=1 << 20) as writer:
        for start in range(0, 40, 10):
            writer.write_batch(range(start, start + 10), values[start : start + 10])
        writer.finish()
        assert writer._env.info()["map_size"] > 1 << 20
    np.testing.assert_allclose(open_store(tmp_path / "c").read(np.arange(40)), values.reshape(40, 512, 49), atol=1e-2)


def test_a_batch_that_fails_writes_nothing(tmp_path):
    values = maps(4)
    values[2, 0, 0, 0] = 1e6  # beyond float16
    with FeatureStoreWriter(tmp_path / "c", identity(4)) as writer:
        with pytest.raises(InputError, match="item 2: non-finite .*--dtype float32"):
            writer.write_batch(range(4), values)
    assert not (tmp_path / "c").exists()  # not even an empty environment


WRITER_SCRIPT = """
import sys, time, numpy as np
from harness.features.store import CacheKey, FeatureStoreWriter
folder, count, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ident = {**CacheKey("toy", weights="none").as_dict(), "weights_sha256": None, "preprocessing": "t",
         "shape": [2048, 7, 7], "count": count, "command": "python -m harness.features extract --dataset toy"}
rng = np.random.default_rng(0)
with FeatureStoreWriter(folder, ident) as w:
    done = set(w.present().tolist())
    for start in range(0, count, batch):
        idx = [i for i in range(start, min(start + batch, count)) if i not in done]
        if idx:
            w.write_batch(idx, np.full((len(idx), 2048, 7, 7), 1.5, dtype=np.float32) * np.array(idx)[:, None, None, None])
        time.sleep(0.05)  # a slow producer, so the kill lands part-way
    w.finish()
"""


def test_sigkill_never_leaves_a_partial_item(tmp_path):
    folder, count, batch = tmp_path / "c", 150, 10
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(folder), str(count), str(batch)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while stored_items(folder) < 3 * batch:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader = open_for_info(folder)
    assert 0 < reader.stored < count, "the kill came too late to test anything"
    assert reader.stored % batch == 0  # whole batches only
    assert [p for p in verify(reader, progress=False) if "missing" not in p] == []
    reader.close()
    subprocess.run([sys.executable, "-c", WRITER_SCRIPT, str(folder), str(count), str(batch)], env=env, check=True,
                   capture_output=True)
    reader = open_store(folder)
    assert reader.stored == count and reader.duplicates == 0
    assert verify(reader, progress=False) == []
    np.testing.assert_array_equal(reader.read(np.array([0, 149]))[:, 0, 0], [0.0, 223.5])


def test_info_verify_reports_a_corrupted_item(tmp_path, capsys):
    folder = build(tmp_path, maps(6))
    assert features_cli(["info", str(folder), "--verify"]) == 0
    assert "verify       OK: 6 items re-read" in capsys.readouterr().out
    env = lmdb.open(str(folder / "shard-0-of-1"), subdir=True)
    with env.begin(write=True) as txn:
        raw = bytearray(txn.get(item_key(4)))
        raw[10] ^= 0xFF
        txn.put(item_key(4), bytes(raw))
    env.close()
    assert features_cli(["info", str(folder), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "item 4: checksum mismatch" in out and "1 problems" in out


def test_find_cache_messages_and_choice(tmp_path, monkeypatch):
    with pytest.raises(InputError) as err:
        find_cache(tmp_path, "cub")
    assert str(err.value) == (
        f"no feature cache for 'cub' under {tmp_path}/; build it with: python -m harness.features extract "
        f"--dataset cub --data-root DIR --cache-dir {tmp_path} (or import the authors' HDF5: "
        f"python -m harness.features import-hdf5 --dataset cub --file FILE)"
    )
    values = maps(3)
    build(tmp_path, values, dataset="cub", weights="file:0123456789ab")
    with pytest.raises(CacheMismatchError, match="weights is 'file:0123456789ab' .asked for 'imagenet'."):
        find_cache(tmp_path, "cub", {"weights": "imagenet"})
    build(tmp_path, values, dataset="cub", weights="imagenet")
    assert find_cache(tmp_path, "cub").metadata["weights"] == "imagenet"  # the default key wins a tie
    assert find_cache(tmp_path, "cub", {"weights": "file:0123456789ab"}).metadata["weights"].startswith("file:")
    chosen = tmp_path / "cub__resnet101__file-0123456789ab__224__float16"
    assert find_cache(chosen, "cub").folder == chosen  # --cache-dir may name one cache folder
    with pytest.raises(CacheMismatchError, match="dataset is 'cub' .asked for 'sun'."):
        find_cache(chosen, "sun")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path and default_cache_dir("x") == Path("x")
    assert len(find_cache(None, "cub")) == 3
    monkeypatch.delenv("HARNESS_CACHE")
    assert default_cache_dir() == Path("cache")


def test_reader_survives_pickling(tmp_path):
    values = maps(4)
    reader = open_store(build(tmp_path, values), expect={"count": 4})
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read(np.arange(4)), reader.read(np.arange(4)))


def _rss_file() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("RssFile:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_the_whole_cache_does_not_keep_it_mapped(tmp_path):
    values = maps(200, shape=(512, 7, 7))  # 50 KB an item in float16, 10 MB in all
    reader = open_store(build(tmp_path, values, batch=50))
    assert reader._ranges, "the data file's mapping was not found"
    before = _rss_file()
    for _ in range(3):
        for start in range(0, 200, 20):
            reader.read(np.arange(start, start + 20))
    reader.release_pages()
    assert _rss_file() - before < 4 << 20  # 30 MB were read


def _read_in_child(reader, queue) -> None:
    try:
        queue.put(reader.read(np.arange(4)))
    except Exception as err:  # noqa: BLE001 - reported to the parent
        queue.put(repr(err))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork start method")
def test_a_forked_child_reads_the_parents_reader(tmp_path):
    import multiprocessing as mp

    values = maps(4)
    reader = open_store(build(tmp_path, values))
    expected = reader.read(np.arange(4))
    ctx = mp.get_context("fork")  # as DataLoader workers and Ray's forked workers get it
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(reader, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert not isinstance(got, str), got
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(reader.read(np.arange(4)), expected)  # the parent still reads
