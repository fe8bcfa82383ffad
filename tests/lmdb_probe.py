"""Counting the items of a cache shard from outside, while another process is still writing it."""

from __future__ import annotations

from pathlib import Path

import lmdb

from harness.features.store import _item_keys


def stored_items(folder: Path) -> int:
    """Items committed so far to the single shard of `folder` (0 before its environment exists)."""
    shard = folder / "shard-0-of-1"
    if not (shard / "data.mdb").exists():
        return 0
    env = lmdb.open(str(shard), readonly=True, lock=True, subdir=True)
    try:
        return len(_item_keys(env))
    finally:
        env.close()
