"""Fault: the extraction process SIGKILLed part-way through (issue 9).

Guarantee under test: every batch is one LMDB transaction, so a kill leaves whole items or none;
re-running the same command resumes, writes only the missing items, and `info --verify` then
finds every item exactly once with a valid checksum. Runs through the real CLI.
"""

from __future__ import annotations

import re
from pathlib import Path

import lmdb
import numpy as np
import pytest

from faults import Spawned, kill_pids, run_cli, wait_until, write_jpeg

pytestmark = pytest.mark.slow
FEATURES = "harness.features"
NUM_IMAGES = 16


def stored_items(shard: Path) -> dict[int, bytes]:
    """{index: value} of the items committed in one LMDB shard (the metadata record excluded)."""
    if not (shard / "data.mdb").is_file():
        return {}
    env = lmdb.open(str(shard), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return {int.from_bytes(k, "big"): bytes(v) for k, v in txn.cursor() if len(k) == 8}
    finally:
        env.close()


def test_extraction_killed_part_way_resumes_with_every_item_once(tmp_path, fault_log):
    root = tmp_path / "images"
    names = [f"img_{i:03d}.jpg" for i in range(NUM_IMAGES)]
    for i, name in enumerate(names):
        write_jpeg(root / name, seed=i, size=40)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(names) + "\n")
    cache = tmp_path / "cache"
    args = ["extract", "--dataset", "faultset", "--data-root", root, "--image-list", listing, "--weights", "none",
            "--image-size", "32", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--cache-dir", cache]
    shard = cache / "faultset__resnet101__none__32__float16" / "shard-0-of-1"

    # 1. Start, wait until a few batches are committed but not all, SIGKILL.
    first = Spawned(FEATURES, *args, cwd=tmp_path, name="extract1")
    try:
        wait_until(lambda: len(stored_items(shard)) >= 4, 240, "the first committed batches", spawned=first)
        first.track()
        kill_pids([first.pid])
        assert first.proc.wait(10) == -9
    finally:
        first.cleanup()
    at_kill = stored_items(shard)
    assert 4 <= len(at_kill) < NUM_IMAGES, f"{len(at_kill)} items at the kill: not part-way"
    assert len(at_kill) % 2 == 0, "a batch of 2 was half committed"

    # 2. The cache is refused as incomplete, not read as if it were whole.
    info = run_cli(FEATURES, "info", cache, cwd=tmp_path)
    assert re.search(rf"{len(at_kill)} stored of {NUM_IMAGES}", info.stdout), info.stdout + info.stderr
    assert re.search(rf"incomplete, {NUM_IMAGES - len(at_kill)} missing", info.stdout, re.I), info.stdout

    # 3. The same command resumes: it extracts only what is missing.
    again = run_cli(FEATURES, *args, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{NUM_IMAGES - len(at_kill)} items extracted, {len(at_kill)} already there" in again.stdout, again.stdout

    # 4. Every item once, verified; the items committed before the kill were kept as they were.
    verify = run_cli(FEATURES, "info", cache, "--verify", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{NUM_IMAGES} stored of {NUM_IMAGES} (complete)" in verify.stdout
    assert f"verify       OK: {NUM_IMAGES} items re-read" in verify.stdout
    final = stored_items(shard)
    assert sorted(final) == list(range(NUM_IMAGES))
    assert all(final[i] == value for i, value in at_kill.items()), "items stored before the kill were rewritten"
    # Items are features of their own image: two different images never share a value.
    assert len({v for v in final.values()}) == NUM_IMAGES
    assert np.frombuffer(final[0][:-4], dtype=np.float16).size == 2048
    fault_log(fault="feature extraction SIGKILL, then the same command", injected=1, recovered=1,
              items=NUM_IMAGES, stored_at_kill=len(at_kill), stored_after=len(final), verified=NUM_IMAGES,
              lost=0, duplicated=0)
