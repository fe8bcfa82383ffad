"""What `python -m harness.features info PATH [--verify]` prints and checks."""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import lmdb
import numpy as np

from harness.features.store import (
    CRC_BYTES,
    DamagedCacheError,
    FeatureStoreReader,
    _find_shard_dirs,
    list_caches,
)


def cache_folders(path: str | Path) -> list[Path]:
    """PATH itself when it is a cache folder, else every cache folder directly under it."""
    path = Path(path)
    if _find_shard_dirs(path):
        return [path]
    return [folder for folder, _ in list_caches(path)]


def open_for_info(folder: Path) -> FeatureStoreReader:
    """Open even an incomplete cache, scanning its keys (duplicates, strays); take LMDB's reader lock
    where we may, so that reading beside a running build is safe. When damaged pages stop the scan
    (LMDB reads each item's first page while listing keys), a complete cache opens without it, so
    that `verify` can name the damaged items."""
    first = _find_shard_dirs(folder)[0]
    lock = os.access(first / "lock.mdb", os.W_OK) if (first / "lock.mdb").exists() else os.access(first, os.W_OK)
    try:
        return FeatureStoreReader(folder, allow_incomplete=True, lock=lock, scan=True)
    except DamagedCacheError:
        return FeatureStoreReader(folder, allow_incomplete=True, lock=lock, scan=False)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def describe(reader: FeatureStoreReader) -> list[str]:
    m = reader.metadata
    state = "complete" if reader.complete else f"INCOMPLETE, {len(reader.missing)} missing"
    skipped = f", {len(reader.skipped)} skipped" if reader.skipped else ""
    sha = m.get("weights_sha256") or m.get("source_sha256")
    lines = [
        f"cache        {reader.folder}",
        f"dataset      {m.get('dataset')}",
        f"items        {reader.stored} stored of {reader.count} ({state}{skipped})",
        f"shape        {m.get('shape')} (F={reader.feature_dim}, R={reader.num_regions})",
        f"dtype        {m.get('dtype')}",
        f"backbone     {m.get('backbone')}",
        f"weights      {m.get('weights')}" + (f" (sha256 {sha})" if sha else ""),
        f"image size   {m.get('image_size')}",
        f"preprocess   {m.get('preprocessing')}",
        f"built        {m.get('build_time') or 'not finished'} (created {m.get('created')}, harness {m.get('version')})",
        f"size on disk {_size(reader.size_on_disk())}",
    ]
    if m.get("source"):
        lines.append(f"source       {m['source']}")
    for path, meta in zip(reader.shard_dirs, reader.shard_meta, strict=True):
        state = "complete" if meta.get("complete") else "unfinished"
        lines.append(f"shard        {path.name}: {state}, {len(meta.get('skipped', {}))} skipped")
    for index, why in sorted(reader.skipped.items())[:20]:
        lines.append(f"skipped      {index}: {why}")
    if len(reader.skipped) > 20:
        lines.append(f"skipped      ... and {len(reader.skipped) - 20} more")
    if not reader.complete:
        lines.append(f"to finish    {reader._incomplete_message().split('with: ', 1)[-1]}")
    return lines


def verify(reader: FeatureStoreReader, progress: bool = True) -> list[str]:
    """Re-read every item: readable by LMDB, size, CRC32, dtype/shape and finiteness. Returns the problems found."""
    from tqdm import tqdm

    problems: list[str] = []
    if reader.duplicates:
        problems.append(f"{reader.duplicates} items are stored in more than one shard")
    if reader.out_of_range:
        problems.append(f"{reader.out_of_range} items have an index outside 0..{reader.count - 1}")
    if not reader.complete:
        problems.append(f"{len(reader.missing)} items missing (e.g. index {int(reader.missing[0])})")
    expected = reader.item_bytes + CRC_BYTES
    n_values = reader.feature_dim * reader.num_regions
    with tqdm(total=reader.stored, unit="item", desc="verify", file=sys.stderr, dynamic_ncols=True,
              disable=not progress) as bar:
        for index, raw in reader.iter_raw():
            bar.update(1)
            if isinstance(raw, lmdb.Error):
                problems.append(f"item {index}: unreadable, LMDB's pages are damaged ({raw})")
                continue
            if raw is None or len(raw) != expected:
                problems.append(f"item {index}: {0 if raw is None else len(raw)} bytes, expected {expected} "
                                f"({reader.metadata.get('dtype')} {reader.metadata.get('shape')} + CRC)")
                continue
            body, (crc,) = raw[:-CRC_BYTES], struct.unpack("<I", raw[-CRC_BYTES:])
            if zlib.crc32(body) != crc:
                problems.append(f"item {index}: checksum mismatch (stored data corrupted)")
                continue
            if not np.isfinite(np.frombuffer(body, dtype=reader.dtype, count=n_values)).all():
                problems.append(f"item {index}: non-finite values")
    return problems
