"""A cache damaged after it was written: bytes flipped in data.mdb, in an item's data and in LMDB's
own pages. Every read checks; training stops with one line naming the cache, the item and
`info --verify`, which lists the damage."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import lmdb
import numpy as np
import pytest
from faults import make_tiny_cub, run_cli

from harness.features.__main__ import run as features_cli
from harness.features.info import open_for_info, verify
from harness.features.loader import PrefetchingBatches
from harness.features.store import CacheKey, DamagedCacheError, FeatureStoreWriter, item_key, open_store

PAGE, PAGE_HEADER = 4096, 16  # LMDB's page size here and its page header (pgno, pad, flags, ...)
P_LEAF = 0x02


def build(folder: Path, count: int, shape=(64, 7, 7), dataset: str = "toy", **identity) -> np.ndarray:
    """A complete cache of `count` random items written with the store; returns the values."""
    values = np.random.default_rng(0).random((count, *shape)).astype(np.float16).astype(np.float32)
    ident = {**CacheKey(dataset, weights="none").as_dict(), "weights_sha256": None, "preprocessing": "t",
             "shape": list(shape), "count": count, "command": "python -m harness.features extract ...", **identity}
    with FeatureStoreWriter(folder, ident) as writer:
        writer.write_batch(range(count), values)
        writer.finish()
    return values


def data_file(folder: Path) -> Path:
    return folder / "shard-0-of-1" / "data.mdb"


def payload_offset(folder: Path, index: int) -> int:
    """Where item `index`'s stored bytes start in data.mdb (found by content: items are random)."""
    env = lmdb.open(str(folder / "shard-0-of-1"), readonly=True, lock=False)
    with env.begin() as txn:
        value = txn.get(item_key(index))
    env.close()
    blob = data_file(folder).read_bytes()
    at = blob.find(value)
    assert at > 0 and blob.find(value, at + 1) < 0
    return at


def flip(folder: Path, offset: int, mask: int = 0xFF) -> None:
    with open(data_file(folder), "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def assert_one_line(err: BaseException, folder: Path, index: int | None) -> str:
    text = str(err)
    assert "\n" not in text and str(folder) in text and "python -m harness.features info --verify" in text
    if index is not None:
        assert f"item {index} " in text, text
    return text


def test_flipped_item_data_stops_every_read_path(tmp_path):
    folder = tmp_path / "c"
    values = build(folder, 12)
    flip(folder, payload_offset(folder, 7) + 1000)
    reader = open_store(folder)  # damage inside an item is found when the item is read
    np.testing.assert_array_equal(reader.read(np.array([6, 8])), values[[6, 8]].reshape(2, 64, 49))
    with pytest.raises(DamagedCacheError) as err:
        reader.read(np.array([3, 7, 1]))
    assert "checksum mismatch" in assert_one_line(err.value, folder, 7)
    batches = [np.array([0, 1]), np.array([5, 7]), np.array([2, 3])]
    loader = PrefetchingBatches(reader, iter(batches), "cpu")
    seen = []
    with pytest.raises(DamagedCacheError) as err:
        for positions, _ in loader:
            seen.append(positions.tolist())
    assert seen == [[0, 1]]
    assert_one_line(err.value, folder, 7)
    reader.verify_reads = False  # bench/loader.py --no-verify: the check is what catches it
    reader.read(np.array([7]))
    reader.close()
    with open_for_info(folder) as info:
        assert verify(info, progress=False) == ["item 7: checksum mismatch (stored data corrupted)"]


def test_flipped_page_header_of_an_item_names_the_item(tmp_path, capsys):
    folder = tmp_path / "c"
    build(folder, 12)
    start = payload_offset(folder, 4) - PAGE_HEADER  # the item's first overflow page
    assert start % PAGE == 0
    flip(folder, start + 10)  # its page flags: LMDB no longer sees an overflow page
    with open_store(folder) as reader:
        with pytest.raises(DamagedCacheError) as err:
            reader.read(np.arange(12))
        assert "LMDB" in assert_one_line(err.value, folder, 4)
        reader.read(np.array([3, 5]))  # a fresh transaction reads the others
    assert features_cli(["info", str(folder), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM      item 4: unreadable, LMDB's pages are damaged" in out and "1 problems" in out


def test_flipped_index_page_is_found_before_reading(tmp_path, capsys):
    folder = tmp_path / "c"
    build(folder, 12)
    blob = data_file(folder).read_bytes()
    leaves = [p for p in range(2, len(blob) // PAGE)
              if struct.unpack_from("<QHH", blob, p * PAGE) [::2] == (p, P_LEAF)]
    assert leaves
    for page in leaves:  # the live leaf and the older copies LMDB keeps until reused
        flip(folder, page * PAGE + 10, 0x01)
    with pytest.raises(DamagedCacheError) as err:
        open_store(folder)
    assert "LMDB" in assert_one_line(err.value, folder, None)
    assert features_cli(["info", str(folder), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM      {folder}: damaged feature cache" in out and "FAILED" in out


def test_damaged_meta_pages_are_refused_in_one_line(tmp_path):
    folder = tmp_path / "c"
    build(folder, 4)
    for page in (0, 1):
        flip(folder, page * PAGE + PAGE_HEADER)  # the magic number of both meta pages
    with pytest.raises(DamagedCacheError) as err:
        open_store(folder)
    assert "MDB_INVALID" in assert_one_line(err.value, folder, None)


def test_a_value_of_the_wrong_size_is_damage(tmp_path):
    """A value without its CRC (or cut short): refused like a checksum mismatch."""
    folder = tmp_path / "c"
    build(folder, 6)
    env = lmdb.open(str(folder / "shard-0-of-1"), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(item_key(2), txn.get(item_key(2))[:-4])
    env.close()
    with open_store(folder) as reader, pytest.raises(DamagedCacheError) as err:
        reader.read(np.array([2]))
    assert re.search(r"\d+ bytes, expected \d+ bytes", assert_one_line(err.value, folder, 2))


def test_training_on_a_damaged_cache_exits_2_with_one_line(tmp_path):
    """python -m harness.train on a real-layout CUB whose cache has one flipped item."""
    cub = make_tiny_cub(tmp_path / "cub")
    folder = tmp_path / "caches" / CacheKey("cub", "resnet101", "none", 32, "float16").folder_name()
    build(folder, cub.num_images, shape=(2048, 1, 1), dataset="cub", image_size=32,
          images_sha256="0" * 64)
    victim = 5
    flip(folder, payload_offset(folder, victim) + 100)
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("harness.train", "--dataset", "cub", "--data-root", cub.root, "--word-vectors",
                cub.word_vectors, "--cache-dir", tmp_path / "caches", "--epochs", "1", cwd=work)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("harness.train: error: ") and str(folder) in lines[0]
    assert f"item {victim} " in lines[0] and "info --verify" in lines[0]


@pytest.mark.slow
def test_a_search_on_a_damaged_cache_stops_with_the_caches_one_line(tmp_path):
    """python -m harness.search: the trial that reads a damaged item fails, and the whole search stops
    with the cache's line (exit 2), instead of retraining the best configuration on damaged features."""
    cub = make_tiny_cub(tmp_path / "cub")
    folder = tmp_path / "caches" / CacheKey("cub", "resnet101", "none", 32, "float16").folder_name()
    build(folder, cub.num_images, shape=(2048, 1, 1), dataset="cub", image_size=32,
          images_sha256="0" * 64)
    for index in range(cub.num_images):  # every item: whichever a trial reads first is damaged
        flip(folder, payload_offset(folder, index) + 100)
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("harness.search", "--dataset", "cub", "--data-root", cub.root, "--word-vectors", cub.word_vectors,
                "--cache-dir", tmp_path / "caches", "--epochs", "1", "--num-samples", "2", "--final-seeds", "1",
                "--max-failures", "0", "--storage", tmp_path / "search", "--tracking-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=work, timeout=600)
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("harness.search: error: "), r.stderr[-3000:]
    assert str(folder) in errors[0] and "damaged feature cache: item " in errors[0] and "info --verify" in errors[0]
