"""The LMDB feature store: one cache folder per (dataset, backbone, weights, image size, dtype).

A cache folder holds one or more shard environments (`shard-I-of-N/`, an LMDB environment each);
an unsharded build is `shard-0-of-1`. Items are keyed by the 0-based image index (8 bytes,
big-endian, so keys sort by index); a value is the raw [F, R] array followed by the CRC32 of
those bytes, which every read checks (and `info --verify`, for all items). Each environment also
holds a JSON metadata record.

Why LMDB: a committed transaction is all or nothing, so a killed build never leaves half an item;
readers open it read-only without locks and share the OS page cache, so many trials on one node
read one copy; reads go from the memory map straight into a preallocated array.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import numpy as np

import harness
from harness.errors import InputError
from harness.features import offsets

if TYPE_CHECKING:
    import torch

FORMAT = "harness-feature-store/1"
META_KEY = b"~meta"  # never 8 bytes long, so it cannot collide with an item key
CRC_BYTES = 4
DTYPES = ("float16", "float32")
IDENTITY_FIELDS = ("dataset", "backbone", "weights", "image_size", "dtype")
VOLATILE_FIELDS = ("command", "source")  # may change between runs of one build without changing it
_SHARD_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")
_MIN_MAP = 64 << 20
# ATen runs an elementwise copy of at most this many elements on the calling thread. Converting in
# such chunks avoids the intra-op thread pool, whose hand-offs cost more than they save when several
# trials share a node's cores (measured here: 3 ms vs 10 ms a batch of 50 x 2048 x 49).
_CONVERT_CHUNK = 32768


# Linux counts file pages mapped into a process in its RSS, and here (kernel 6.x, large folios) each
# read of an item maps ~400 KB of the file around it: a trial that reads a 20,000-item cache for a
# while shows the whole file in its RSS although it holds none of it. Every this many items, the
# reader drops its page-table entries for the map (madvise DONTNEED on a shared read-only file
# mapping: the page cache keeps the data, the next read is a minor fault), so RSS stays flat.
RELEASE_EVERY_ITEMS = 50
_MADV_WILLNEED, _MADV_DONTNEED = 3, 4
_PAGE = 4096
READAHEAD = True
# Reads in flight per batch. On the 150,000-item cache from cold (docs/performance.md), direct reads
# with 8 threads gave 1.07 of the disk's 4-in-flight pread rate against 0.76 with 4; warm, 8 and 4
# threads read alike (the copies and checks share the cores either way).
READ_THREADS = 8
# Read items with os.preadv at offsets taken from LMDB's B-tree (harness/features/offsets.py) instead
# of looking each up through the memory map; LMDB's path stays for when the table cannot be built.
DIRECT_READS = True


def _map_ranges(data_file: Path) -> list[tuple[int, int]]:
    """(start, length) of this process's mappings of `data_file` (Linux; else none)."""
    target = os.path.realpath(data_file)
    try:
        with open("/proc/self/maps") as fh:
            lines = fh.readlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].rstrip("\n") == target:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end - start))
    return out


def _madvise(ranges: Iterable[tuple[int, int]], advice: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for start, length in ranges:
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), advice)


def _madvise_dontneed(ranges: list[tuple[int, int]]) -> None:
    _madvise(ranges, _MADV_DONTNEED)


def _page_range(value: memoryview) -> tuple[int, int]:
    """(start, length) of the whole pages of the map that hold `value` (a buffer into the map)."""
    start = np.frombuffer(value, dtype=np.uint8).ctypes.data
    first = start & ~(_PAGE - 1)
    return first, start + len(value) - first


def _convert(src, dst) -> None:
    """dst[...] = src with a dtype change, chunk by chunk (see _CONVERT_CHUNK)."""
    s, d = src.reshape(-1), dst.reshape(-1)
    for start in range(0, s.numel(), _CONVERT_CHUNK):
        d[start : start + _CONVERT_CHUNK].copy_(s[start : start + _CONVERT_CHUNK])


class CacheMismatchError(InputError):
    """A cache exists but was built with other settings than the ones asked for."""


class IncompleteCacheError(InputError):
    """A cache is missing items (an interrupted or partial build)."""


class DamagedCacheError(InputError):
    """Stored bytes changed after they were written: a checksum mismatch, or LMDB's own pages damaged."""


# What LMDB raises when its pages are not what it wrote (a flipped byte in a page header, a
# truncated or overwritten file); other lmdb.Errors on opening (permissions, ...) are not damage.
_LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError,
                lmdb.BadTxnError, lmdb.PanicError, lmdb.BadValsizeError)


def _cache_folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if _SHARD_RE.match(path.name) else path


def damaged(where: str | Path, what: str, item: int | None = None, rebuild: str | None = None) -> DamagedCacheError:
    """The one-line error for a damaged cache: the cache, the item where known, how to check it."""
    folder = _cache_folder(where)
    which = f"item {item} " if item is not None else ""
    then = f"then remove the folder and rebuild it with: {rebuild}" if rebuild else "then remove and rebuild it"
    return DamagedCacheError(
        f"{folder}: damaged feature cache: {which}{what}; its features cannot be trusted: list the damaged "
        f"items with python -m harness.features info --verify {folder}, {then}"
    )


def _opening_error(path: Path, err: lmdb.Error) -> InputError:
    if isinstance(err, _LMDB_DAMAGE):
        return damaged(path, f"LMDB cannot open {path.name} ({err})")
    return InputError(f"{_cache_folder(path)}: cannot open {path.name} ({err}); expected a readable LMDB cache")


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where caches live: the argument, else $HARNESS_CACHE, else ./cache."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("HARNESS_CACHE")
    return Path(env) if env else Path("cache")


@dataclass(frozen=True)
class CacheKey:
    """What a cache was built with; one LMDB cache folder per key."""

    dataset: str
    backbone: str = "resnet101"  # "resnet101-holistic" for imported res101.mat vectors
    weights: str = "imagenet"  # "imagenet", "none", "file:<sha256[:12]>", "imported:<sha256[:12]>"
    image_size: int = 224
    dtype: str = "float16"  # or "float32"

    def folder_name(self) -> str:
        parts = [self.dataset, self.backbone, self.weights, str(self.image_size), self.dtype]
        return "__".join(re.sub(r"[^A-Za-z0-9._-]", "-", p) for p in parts)

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in IDENTITY_FIELDS}


def item_key(index: int) -> bytes:
    return struct.pack(">Q", int(index))


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard}-of-{num_shards}"


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise InputError(f"--shard: expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_indices(count: int, shard: int, num_shards: int) -> np.ndarray:
    """The items of shard I of N: indices i with i % N == I."""
    return np.arange(shard, count, num_shards, dtype=np.int64)


def encode_item(array: np.ndarray, dtype: str) -> bytes:
    """Raw bytes of `array` in `dtype` plus their CRC32; refuses values that are not finite."""
    with np.errstate(over="ignore"):
        data = np.ascontiguousarray(array, dtype=np.dtype(dtype))
    if not np.isfinite(data).all():
        hint = " (values beyond float16's range: use --dtype float32)" if np.isfinite(array).all() else ""
        raise ValueError(f"non-finite feature values{hint}")
    raw = data.tobytes()
    return raw + struct.pack("<I", zlib.crc32(raw))


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _find_shard_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _SHARD_RE.match(p.name) and (p / "data.mdb").is_file()]
    return sorted(found, key=lambda p: tuple(int(x) for x in _SHARD_RE.match(p.name).groups()[::-1]))


def _open_env(path: Path, readonly: bool, lock: bool) -> lmdb.Environment:
    try:
        return lmdb.open(str(path), readonly=readonly, lock=lock, readahead=READAHEAD, subdir=True,
                         max_readers=1024, create=False)
    except lmdb.Error as err:
        raise _opening_error(path, err) from None


# LMDB forbids opening one environment twice in a process, so read-only handles are shared and
# counted; the key holds the pid because handles must not cross a fork.
_SHARED: dict[tuple[int, str], list] = {}
_SHARED_LOCK = threading.Lock()


def _forget_inherited() -> None:
    """In a forked child: close the parent's lock-free handles, so the child may open its own.

    py-lmdb refuses a second open of files it believes open, and a child inherits that belief.
    Lock-free read-only handles hold no reader slot, so closing the child's copy is harmless.
    """
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()  # another thread may have held it at the fork
    for key, (env, _, locked) in list(_SHARED.items()):
        if not locked:
            env.close()
        del _SHARED[key]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


def _acquire(path: Path, lock: bool = False) -> lmdb.Environment:
    key = (os.getpid(), os.path.realpath(path))
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is None:
            entry = _SHARED[key] = [_open_env(path, readonly=True, lock=lock), 0, lock]
        entry[1] += 1
        return entry[0]


def _release(path: Path) -> None:
    key = (os.getpid(), os.path.realpath(path))
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                entry[0].close()
                del _SHARED[key]


def read_metadata(env: lmdb.Environment) -> dict | None:
    try:
        with env.begin() as txn:
            raw = txn.get(META_KEY)
        return json.loads(raw) if raw is not None else None
    except lmdb.Error as err:
        raise damaged(env.path(), f"LMDB cannot read the metadata record ({err})") from None
    except ValueError as err:  # json or utf-8
        raise damaged(env.path(), f"the metadata record is not valid JSON ({err})") from None


def _item_keys(env: lmdb.Environment) -> np.ndarray:
    """Indices of all items in an environment (keys only; values are not touched)."""
    try:
        with env.begin() as txn:
            keys = [k for k in txn.cursor().iternext(keys=True, values=False) if len(k) == 8]
    except lmdb.Error as err:
        raise damaged(env.path(), f"LMDB cannot list the items ({err})") from None
    if not keys:
        return np.zeros(0, dtype=np.int64)
    return np.frombuffer(b"".join(keys), dtype=">u8").astype(np.int64)


# ---------------------------------------------------------------- writer


class FeatureStoreWriter:
    """Writes one shard environment of a cache folder; every batch is one transaction.

    `identity` is the metadata that must agree with an existing shard (dataset, backbone,
    weights, weights_sha256, image_size, preprocessing, shape, dtype, count, ...). Re-opening an
    existing cache resumes it: `present()` says which items are already stored in any shard.
    """

    def __init__(self, folder: str | Path, identity: dict, shard: tuple[int, int] = (0, 1),
                 map_size: int | None = None) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.shard = shard
        self.dtype = identity["dtype"]
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.item_shape = tuple(identity["shape"])
        self.item_bytes = int(np.prod(self.item_shape)) * np.dtype(self.dtype).itemsize
        self.path = self.folder / shard_name(*shard)
        self._map_size = map_size
        self._created: list[Path] = []
        self._committed = False
        self._env: lmdb.Environment | None = None  # created on the first write: nothing half-made
        self.meta: dict | None = None
        self._check_existing()

    def _check_existing(self) -> None:
        for path in _find_shard_dirs(self.folder):
            env = _acquire(path)
            try:
                meta = read_metadata(env)
            finally:
                _release(path)
            if meta is None:  # created, then killed before its first commit: holds nothing
                continue
            diff = metadata_differences(meta, {k: v for k, v in self.identity.items() if k not in VOLATILE_FIELDS})
            if diff:
                raise CacheMismatchError(
                    f"{path}: the existing cache was built with other settings ({'; '.join(diff)}); "
                    f"remove {self.folder} or choose another --cache-dir"
                )

    def present(self) -> np.ndarray:
        """Indices already stored in any shard of this cache folder (sorted, unique)."""
        parts = []
        for path in _find_shard_dirs(self.folder):
            if self._env is not None and path == self.path:  # LMDB allows one handle per process
                parts.append(_item_keys(self._env))
                continue
            env = _acquire(path)
            try:
                parts.append(_item_keys(env))
            finally:
                _release(path)
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def _make_dirs(self, needed: int) -> None:
        """Create the shard folder, after checking the cache dir is writable and has room for the
        shard (an LMDB lock file on a full tmpfs would crash the process, not raise)."""
        missing = []
        existing = self.path
        while not existing.exists():
            missing.append(existing)
            existing = existing.parent
        where = self.folder.parent
        try:
            stat = os.statvfs(existing)
        except OSError as err:
            raise InputError(f"--cache-dir {where}: cannot be read ({err.strerror})") from None
        if missing and not os.access(existing, os.W_OK):
            raise InputError(f"--cache-dir {where}: expected a writable folder ({existing} is not writable)")
        free = stat.f_bavail * stat.f_frsize
        if free < needed:
            raise InputError(f"--cache-dir {where}: not enough space: {free / 2**30:.2f} GiB free, the cache needs "
                             f"about {needed / 2**30:.2f} GiB more; expected a folder with room for it")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"--cache-dir {where}: cannot write there ({err.strerror}); expected a writable "
                             f"folder") from None
        self._created = missing  # removed again if the first commit fails

    def _discard_created(self) -> None:
        """Remove what this writer created when its first commit failed: nothing is left behind."""
        if self._env is not None:
            self._env.close()
            self._env = None
        if self._created:  # deepest first: the last one is the top folder this writer made
            shutil.rmtree(self._created[-1], ignore_errors=True)
        self._created = []

    def _ensure_env(self) -> lmdb.Environment:
        if self._env is None:
            n_items = len(shard_indices(int(self.identity["count"]), *self.shard))
            pages = -(-(self.item_bytes + CRC_BYTES + 16) // 4096)  # an overflow page run per item
            needed = n_items * pages * 4096
            if not (self.path / "data.mdb").is_file():
                self._make_dirs(needed + (1 << 20))
            size = self._map_size or int(needed * 1.1) + _MIN_MAP
            try:
                self._env = lmdb.open(str(self.path), map_size=size, subdir=True, readahead=True,
                                      max_dbs=0, lock=True, sync=True, metasync=True)
            except lmdb.Error as err:
                self._discard_created()
                raise InputError(f"--cache-dir {self.folder.parent}: cannot create the cache there ({err})") from None
            meta = read_metadata(self._env)
            if meta is None:
                meta = {
                    "format": FORMAT, **self.identity,
                    "shard": list(self.shard), "skipped": {}, "complete": False,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": harness.__version__,
                }
            meta.update({k: self.identity[k] for k in VOLATILE_FIELDS if k in self.identity})
            self.meta = meta
        return self._env

    def _commit(self, puts: Sequence[tuple[bytes, bytes]], meta: dict) -> None:
        """One transaction: all the items and the metadata, or nothing; grows the map when full."""
        env = self._ensure_env()
        while True:
            try:
                with env.begin(write=True) as txn:
                    for key, value in puts:
                        txn.put(key, value)
                    txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode())
                self._committed = True
                return
            except lmdb.MapFullError:
                env.set_mapsize(max(env.info()["map_size"] * 2, _MIN_MAP))
            except (lmdb.Error, OSError) as err:  # e.g. the disk filled up: the transaction is void
                kept = "stored items are kept; re-run to resume" if self._committed else "nothing was written"
                if not self._committed:
                    self._discard_created()
                full = "No space" in str(err) or getattr(err, "errno", None) == 28
                what = "no space left on the device" if full else f"write failed ({err})"
                raise InputError(f"--cache-dir {self.folder.parent}: {what} ({kept}); expected a writable folder "
                                 f"with room for the cache") from None

    def write_batch(self, indices: Iterable[int], arrays: Sequence[np.ndarray] | np.ndarray,
                    skipped: dict[int, str] | None = None) -> None:
        """Store items (and record skipped ones) atomically, in one transaction."""
        puts = []
        for index, array in zip(indices, arrays, strict=True):
            if int(index) % self.shard[1] != self.shard[0] or not 0 <= int(index) < int(self.identity["count"]):
                raise ValueError(f"item {index} does not belong to shard {self.shard[0]}/{self.shard[1]}")
            if int(np.prod(array.shape)) != int(np.prod(self.item_shape)):
                raise ValueError(f"item {index} has shape {tuple(array.shape)}, expected {self.item_shape}")
            try:
                puts.append((item_key(index), encode_item(array, self.dtype)))
            except ValueError as err:
                raise InputError(f"item {index}: {err}") from None
        self._ensure_env()  # only now: a batch that fails to encode creates nothing
        meta = dict(self.meta)
        old_skipped = dict(meta.get("skipped", {}))
        for index, _ in puts:
            old_skipped.pop(str(struct.unpack(">Q", index)[0]), None)
        old_skipped.update({str(k): v for k, v in (skipped or {}).items()})
        meta["skipped"] = old_skipped
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._commit(puts, meta)
        self.meta = meta

    def finish(self) -> dict:
        """Mark the shard complete when every one of its items is stored or skipped."""
        self._ensure_env()
        mine = shard_indices(int(self.identity["count"]), *self.shard)
        have = np.union1d(self.present(), np.array([int(k) for k in self.meta["skipped"]], dtype=np.int64))
        missing = np.setdiff1d(mine, have)
        meta = dict(self.meta)
        meta["complete"] = missing.size == 0
        if meta["complete"]:
            meta["build_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._commit([], meta)
        self.meta = meta
        return meta

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- reader


def metadata_differences(meta: dict, expect: dict | None) -> list[str]:
    """'field is X (asked for Y)' for each field of `expect` that `meta` does not match."""
    out = []
    for name, want in (expect or {}).items():
        have = meta.get(name)
        if isinstance(want, tuple):
            want = list(want)
        if have != want:
            out.append(f"{name} is {have!r} (asked for {want!r})")
    return out


def _rebuild_command(meta: dict, shard: tuple[int, int] | None = None) -> str:
    command = meta.get("command") or (
        f"python -m harness.features extract --dataset {meta.get('dataset')} --data-root DIR"
    )
    if shard is not None and shard[1] > 1:
        command += f" --shard {shard[0]}/{shard[1]}"
    return command


def _command_for(settings: dict) -> str:
    """The command that builds a cache with these settings (a hint for mismatch messages)."""
    dataset, weights = settings.get("dataset"), str(settings.get("weights", "imagenet"))
    if weights.startswith("imported:"):
        sub = "import-res101" if settings.get("backbone") == "resnet101-holistic" else "import-hdf5"
        command = f"python -m harness.features {sub} --dataset {dataset} --file FILE"
    else:
        arg = "FILE" if weights.startswith("file:") else weights
        command = f"python -m harness.features extract --dataset {dataset} --data-root DIR --weights {arg}"
        if settings.get("image_size", 224) != 224:
            command += f" --image-size {settings['image_size']}"
    if settings.get("dtype", "float16") != "float16":
        command += f" --dtype {settings['dtype']}"
    return command


class FeatureStoreReader:
    """Read-only view of a cache folder (all its shard environments as one FeatureSource)."""

    def __init__(self, folder: str | Path, expect: dict | None = None, allow_incomplete: bool = False,
                 lock: bool = False, scan: bool = False) -> None:
        self.folder = Path(folder)
        self._scan = scan
        self._expect = expect
        self._allow_incomplete = allow_incomplete
        self._lock = lock
        self._open()

    # Environments are per process: after a fork or unpickling, reopen them.
    def __getstate__(self) -> dict:
        return {"folder": str(self.folder), "expect": self._expect,
                "allow_incomplete": self._allow_incomplete, "lock": self._lock, "scan": self._scan}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["expect"], state["allow_incomplete"], state["lock"], state["scan"])

    def _open(self) -> None:
        try:
            self._open_envs()
        except BaseException:
            self.close()
            raise

    def _open_envs(self) -> None:
        """Open every shard, set the read settings, check the metadata, then find every item."""
        self._pid = os.getpid()
        self._local = threading.local()
        self._acquire_shards()
        self._read_settings()
        self._check_metadata()
        self._read_shape()
        self._locate_items()

    def _acquire_shards(self) -> None:
        self.envs, self.shard_dirs, self.shard_meta = [], [], []
        for path in _find_shard_dirs(self.folder):
            env = _acquire(path, lock=self._lock)
            meta = read_metadata(env)
            if meta is None:  # created, then killed before its first commit: holds nothing
                _release(path)
                continue
            self.envs.append(env)
            self.shard_dirs.append(path)
            self.shard_meta.append(meta)
        if not self.envs:
            raise InputError(f"{self.folder}: not a feature cache (no shard-I-of-N LMDB environment in it)")

    def _read_settings(self) -> None:
        self.release_every = RELEASE_EVERY_ITEMS
        self._since_release = 0
        # Every read checks each item's CRC32 (bench/loader.py --no-verify measures the cost).
        self.verify_reads = True
        # Before copying a batch, ask the kernel for all its items at once (MADV_WILLNEED): on a
        # cold cache the disk then has a batch of reads in flight instead of one page fault at a time.
        self.request_ahead = True
        # Threads that read items, copy and check them (preadv, LMDB's lookups, the copies and zlib's
        # CRC release the GIL): on a cold cache each waits for the disk, so they wait side by side
        # (that many reads in flight); warm, the copies and checks share the cores.
        self.read_threads = READ_THREADS
        self._pool = None
        # Items are read with os.preadv into the batch buffer at offsets from LMDB's B-tree (read at
        # the first read, no item touched); `read_path` says which path reads ("direct" or "lmdb")
        # and `read_path_reason` why LMDB's, when the table could not be built.
        self.direct_reads = DIRECT_READS
        self._direct = None
        self._direct_lock = threading.Lock()
        self.read_path_reason: str | None = None
        self._ranges = [r for d in self.shard_dirs for r in _map_ranges(d / "data.mdb")]

    def _check_metadata(self) -> None:
        """Shards agree with each other, the format is known, and the cache is the one asked for."""
        dirs = self.shard_dirs
        self.metadata = dict(self.shard_meta[0])
        for path, meta in zip(dirs[1:], self.shard_meta[1:], strict=True):
            keys = [k for k in ("format", *IDENTITY_FIELDS, "shape", "count", "weights_sha256") if k in self.metadata]
            diff = metadata_differences(meta, {k: self.metadata[k] for k in keys})
            if diff:
                raise CacheMismatchError(f"{path}: shard disagrees with {dirs[0].name} ({'; '.join(diff)})")
        if self.metadata.get("format") != FORMAT:
            raise InputError(f"{self.folder}: unknown cache format {self.metadata.get('format')!r}, expected {FORMAT}")
        diff = metadata_differences(self.metadata, self._expect)
        if diff:
            raise CacheMismatchError(
                f"{self.folder} was built with other settings: {'; '.join(diff)}; build the cache you asked "
                f"for with: {_command_for({**self.metadata, **self._expect})}"
            )

    def _read_shape(self) -> None:
        shape = self.metadata["shape"]
        self.shape = tuple(shape)
        self.feature_dim = int(shape[0])
        self.num_regions = int(np.prod(shape[1:]))
        self.dtype = np.dtype(self.metadata["dtype"])
        self.count = int(self.metadata["count"])
        self.item_bytes = self.feature_dim * self.num_regions * self.dtype.itemsize
        self.skipped: dict[int, str] = {}
        for meta in self.shard_meta:
            self.skipped.update({int(k): v for k, v in meta.get("skipped", {}).items()})

    def _locate_items(self) -> None:
        # Which environment holds each item (-1: absent). Complete shards of one layout follow the
        # rule i % N == I, checked by counting entries; otherwise the keys are scanned, which touches
        # a page of every item (slow on a cold cache), so it is left to builds and `info`.
        self.duplicates = 0
        self.out_of_range = 0
        self._where = None if self._scan else self._where_by_rule()
        if self._where is None:
            self._where = self._where_by_scan()
        self.stored = int((self._where >= 0).sum())
        self.missing = np.flatnonzero(self._where < 0)
        self.missing = self.missing[~np.isin(self.missing, list(self.skipped))]
        if self.missing.size and not self._allow_incomplete:
            raise IncompleteCacheError(self._incomplete_message())


    def _where_by_rule(self) -> np.ndarray | None:
        layouts = [tuple(meta.get("shard", (0, 1))) for meta in self.shard_meta]
        n = layouts[0][1]
        if sorted(layouts) != [(i, n) for i in range(n)]:
            return None
        for env, meta, (i, _) in zip(self.envs, self.shard_meta, layouts, strict=True):
            expected = len(range(i, self.count, n)) - len(meta.get("skipped", {}))
            if env.stat()["entries"] - 1 != expected:  # - 1: the metadata record
                return None
        lut = np.empty(n, dtype=np.int16)
        for e, (i, _) in enumerate(layouts):
            lut[i] = e
        where = lut[np.arange(self.count) % n]
        where[np.array(sorted(self.skipped), dtype=np.int64)] = -1
        return where

    def _where_by_scan(self) -> np.ndarray:
        where = np.full(self.count, -1, dtype=np.int16)
        for e, env in enumerate(self.envs):
            keys = _item_keys(env)
            bad = (keys < 0) | (keys >= self.count)
            self.out_of_range += int(bad.sum())
            keys = keys[~bad]
            taken = where[keys] >= 0
            self.duplicates += int(taken.sum())
            where[keys[~taken]] = e  # duplicates keep the first
        return where

    def _incomplete_message(self) -> str:
        m = self.missing
        head = f"{self.folder} is incomplete: {self.stored + len(self.skipped)} of {self.count} items"
        sharded = {tuple(meta.get("shard", (0, 1))) for meta in self.shard_meta}
        n = max(s[1] for s in sharded)
        if n > 1:
            todo = sorted({int(i) % n for i in m})
            cmds = " ; ".join(_rebuild_command(self.metadata, (i, n)) for i in todo[:4])
            more = f" (and {len(todo) - 4} more shards)" if len(todo) > 4 else ""
            return f"{head} (shards {', '.join(f'{i}/{n}' for i in todo)} unfinished); finish it with: {cmds}{more}"
        return f"{head}; finish it (a re-run resumes) with: {_rebuild_command(self.metadata)}"

    @property
    def path(self) -> Path:
        return self.folder

    @property
    def cache_id(self) -> str:
        """The cache folder's name: dataset, backbone, weights, image size, dtype."""
        return self.folder.name

    @property
    def complete(self) -> bool:
        return self.missing.size == 0

    def __len__(self) -> int:
        return self.count

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # forked: LMDB environments must not cross a fork
            if self._direct:  # this process's copies of the parent's descriptors
                for fd in self._direct[0]:
                    os.close(fd)
            self._open()

    def read(self, indices: np.ndarray) -> np.ndarray:
        """float32 [n, F, R] in the order of `indices`."""
        import torch

        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = torch.empty((len(indices), self.feature_dim, self.num_regions), dtype=torch.float32)
        self.read_into(indices, out)
        return out.numpy()

    def read_into(self, indices: np.ndarray, out: torch.Tensor) -> torch.Tensor:
        """Fill the first len(indices) rows of a preallocated [>=n, F, R] tensor (float32, or float16
        to skip the conversion, e.g. to convert on the GPU after a half-size transfer)."""
        import torch

        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(indices)
        if out.dtype not in (torch.float32, torch.float16) or tuple(out.shape[1:]) != (
            self.feature_dim, self.num_regions
        ):
            raise ValueError(f"out must be float32/float16 [n, {self.feature_dim}, {self.num_regions}], "
                             f"got {out.dtype} {tuple(out.shape)}")
        if len(out) < n or not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError(f"out must be a contiguous CPU tensor of at least {n} rows")
        if out.dtype == (torch.float16 if self.dtype == np.float16 else torch.float32):
            self._copy_raw(indices, out[:n].numpy())
            return out
        staging = self._staging(n)
        self._copy_raw(indices, staging)
        _convert(torch.from_numpy(staging), out[:n])
        return out

    def _staging(self, n: int) -> np.ndarray:
        buf = getattr(self._local, "staging", None)
        if buf is None or len(buf) < n:
            buf = np.empty((n, self.feature_dim, self.num_regions), dtype=self.dtype)
            self._local.staging = buf
        return buf[:n]

    def _copy_raw(self, indices: np.ndarray, out: np.ndarray) -> None:
        """Copy stored values, unconverted, from the memory map into `out` [n, F, R]."""
        self._check_pid()
        if len(indices) and (indices.min() < 0 or indices.max() >= self.count):
            raise IndexError(f"image indices must be in 0..{self.count - 1}")
        where = self._where[indices]
        if (where < 0).any():
            self._raise_absent(indices[where < 0])
        flat = out.reshape(len(out), self.feature_dim * self.num_regions)
        direct = self._direct_table() if self.direct_reads else None
        copy = self._copy_from if direct is None else self._pread_into
        jobs = []
        threads = max(1, min(self.read_threads, len(indices) // 4))
        for e, env in enumerate(self.envs):
            rows = np.flatnonzero(where == e) if len(self.envs) > 1 else np.arange(len(indices))
            if direct is None:
                jobs += [(env, rows[k::threads]) for k in range(threads) if len(rows[k::threads])]
            elif len(rows):  # the threads take the next item as each read ends: `threads` reads in flight to the end
                shared = iter(rows.tolist())
                jobs += [(e, shared)] * min(threads, len(rows))
        if len(jobs) == 1:
            copy(jobs[0][0], indices, jobs[0][1], flat)
        else:
            futures = [self._executor().submit(copy, src, indices, rows, flat) for src, rows in jobs]
            for future in futures:  # every job finishes before `out` is handed back; the first error wins
                future.exception()
            for future in futures:
                future.result()
        if direct is None:  # the direct path maps nothing
            self._since_release += len(indices)
            if self.release_every and self._since_release >= self.release_every:
                self.release_pages()

    @property
    def read_path(self) -> str:
        """"direct" (os.preadv at offsets from LMDB's B-tree) or "lmdb" (lookups through the map)."""
        return "direct" if self.direct_reads and self._direct_table() is not None else "lmdb"

    def _direct_table(self):
        """(fd per environment, offset, length, overflow flag per item) for direct reads, built at the
        first read; None (and `read_path_reason`) where it cannot be built."""
        if self._direct is None:
            with self._direct_lock:
                if self._direct is None:
                    try:
                        self._direct = self._build_direct_table()
                    except offsets.TableUnavailable as why:
                        self.read_path_reason = f"reading through LMDB: no offset table ({why})"
                        self._direct = False
        return self._direct or None

    def _build_direct_table(self):
        offset = np.full(self.count, -1, dtype=np.int64)
        length = np.zeros(self.count, dtype=np.int64)
        overflow = np.zeros(self.count, dtype=bool)
        fds, page_size = [], 0
        try:
            for e, (env, path) in enumerate(zip(self.envs, self.shard_dirs, strict=True)):
                try:
                    lmdb_view = {**env.stat(), "last_txnid": env.info()["last_txnid"]}
                except lmdb.Error as err:
                    raise offsets.TableUnavailable(f"LMDB cannot describe {path.name} ({err})") from None
                table = offsets.read_table(path / "data.mdb", lmdb_view)
                if page_size and table.page_size != page_size:
                    raise offsets.TableUnavailable(f"{path.name} has pages of {table.page_size} bytes, not {page_size}")
                page_size = table.page_size
                keep = (table.keys >= 0) & (table.keys < self.count)
                keys = table.keys[keep]
                mine = self._where[keys] == e  # an item stored twice is read from where LMDB's path reads it
                keys = keys[mine]
                offset[keys] = table.offsets[keep][mine]
                length[keys] = table.lengths[keep][mine]
                overflow[keys] = table.overflow[keep][mine]
                fd = os.open(path / "data.mdb", os.O_RDONLY)
                fds.append(fd)
                if hasattr(os, "posix_fadvise"):  # exactly the bytes asked for: no read-ahead around items
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                self._check_against_lmdb(env, fd, keys[[0, -1]] if len(keys) else keys, offset, length)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds, offset, length, overflow, page_size

    @staticmethod
    def _check_against_lmdb(env: lmdb.Environment, fd: int, keys: np.ndarray, offset: np.ndarray,
                            length: np.ndarray) -> None:
        """The table's bytes of a few items equal LMDB's: it read the tree as LMDB does."""
        try:
            with env.begin() as txn:
                for key in keys:
                    expected = txn.get(item_key(int(key)))
                    if expected != os.pread(fd, int(length[key]), int(offset[key])):
                        raise offsets.TableUnavailable(f"item {int(key)}'s bytes differ from LMDB's")
        except lmdb.Error as err:
            raise offsets.TableUnavailable(f"LMDB cannot read item {int(key)} ({err})") from None

    def _pread_into(self, e: int, indices: np.ndarray, rows: Iterable[int], flat: np.ndarray) -> None:
        """flat[j] = item indices[j] for j in rows, one os.preadv each from shard `e`'s data.mdb (the
        value's overflow page header, the item, its CRC32), each checked: size, page header, CRC32."""
        fds, offset, length, overflow, page_size = self._direct
        size, check, fd = self.item_bytes, self.verify_reads, fds[e]
        psize = offsets.PAGE_HEADER  # bytes of the page header read before an overflow value
        header, crc = bytearray(psize), bytearray(CRC_BYTES)
        for j in rows:
            index = int(indices[j])
            at, stored = int(offset[index]), int(length[index])
            if at < 0 or stored != size + CRC_BYTES:
                got = "absent from LMDB's index" if at < 0 else f"{stored} bytes"
                raise self._damaged(index, f"{got}, expected {size + CRC_BYTES} bytes")
            row = flat[j].view(np.uint8)
            if overflow[index]:
                got = os.preadv(fd, [header, row, crc], at - psize)
                want = psize + size + CRC_BYTES
                pgno, flags = struct.unpack_from("<Q2xH", header)
                if got == want and (flags & offsets.P_OVERFLOW == 0 or pgno * page_size != at - psize):
                    raise self._damaged(index, f"LMDB's page header of the item is damaged (page {pgno}, "
                                               f"flags {flags:#x})")
            else:
                got = os.preadv(fd, [row, crc], at)
                want = size + CRC_BYTES
            if got != want:
                raise self._damaged(index, f"data.mdb ends inside it ({got} of {want} bytes read)")
            if check and zlib.crc32(row) != struct.unpack("<I", crc)[0]:
                raise self._damaged(index, "checksum mismatch (its stored bytes changed after writing)")

    def _copy_from(self, env: lmdb.Environment, indices: np.ndarray, rows: Iterable[int], flat: np.ndarray) -> None:
        """flat[j] = item indices[j] of `env` for j in rows, each checked: size, then the CRC32 of the
        copy (in cache by then, so the check costs no second read of the map); lmdb errors and
        mismatches become DamagedCacheError naming the item."""
        n_values, size, check = flat.shape[1], self.item_bytes, self.verify_reads
        index = None
        try:
            with env.begin(buffers=True) as txn:  # buffers point into the map: valid inside the txn
                get = txn.get
                values = []
                for j in rows:  # look up every item first (index pages only, no item data touched)
                    index = int(indices[j])
                    value = get(item_key(index))
                    if value is None or len(value) != size + CRC_BYTES:
                        got = "absent from LMDB's index" if value is None else f"{len(value)} bytes"
                        raise self._damaged(index, f"{got}, expected {size + CRC_BYTES} bytes")
                    values.append((j, index, value))
                if self.request_ahead and len(values) > 1:
                    _madvise([_page_range(value) for _, _, value in values], _MADV_WILLNEED)
                for j, index, value in values:  # noqa: B007 - index names the item in errors
                    row = flat[j]
                    row[:] = np.frombuffer(value, dtype=flat.dtype, count=n_values)
                    if check and zlib.crc32(row) != struct.unpack_from("<I", value, size)[0]:
                        raise self._damaged(index, "checksum mismatch (its stored bytes changed after writing)")
        except lmdb.Error as err:
            raise self._damaged(index, f"LMDB cannot read it, its pages are damaged ({err})") from None

    def _executor(self):
        from concurrent.futures import ThreadPoolExecutor

        with self._direct_lock:  # batches may be read from several threads at once
            if self._pool is None or self._pool[0] != os.getpid():  # threads do not survive a fork
                self._pool = (os.getpid(), ThreadPoolExecutor(self.read_threads, thread_name_prefix="feature-read"))
            return self._pool[1]

    def _damaged(self, index: int | None, what: str) -> DamagedCacheError:
        return damaged(self.folder, what, item=index, rebuild=_rebuild_command(self.metadata))

    def release_pages(self) -> None:
        """Unmap this process's view of the cache pages; the OS page cache keeps them (RSS stays flat)."""
        self._since_release = 0
        _madvise_dontneed(self._ranges)

    def _raise_absent(self, absent: np.ndarray) -> None:
        i = int(absent[0])
        if i in self.skipped:
            raise InputError(f"{self.folder}: image {i} was skipped at build time ({self.skipped[i]})")
        raise IncompleteCacheError(self._incomplete_message())

    def iter_raw(self, indices: Iterable[int] | None = None):
        """(index, stored bytes incl. CRC, None when absent, or the lmdb.Error reading it raised) for
        `indices` (default: all present), for verify; after an error, the next item gets a fresh
        transaction (LMDB invalidates the one that saw damage)."""
        self._check_pid()
        idx = np.flatnonzero(self._where >= 0) if indices is None else np.asarray(list(indices))
        for e, env in enumerate(self.envs):
            mine = [int(i) for i in idx[self._where[idx] == e]]
            k = 0
            while k < len(mine):
                try:
                    with env.begin() as txn:
                        while k < len(mine):
                            raw = txn.get(item_key(mine[k]))
                            k += 1
                            yield mine[k - 1], raw
                except lmdb.Error as err:
                    k += 1
                    yield mine[k - 1], err

    def size_on_disk(self) -> int:
        return _dir_size(self.folder)

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None and pool[0] == os.getpid():
            pool[1].shutdown(wait=True)
        self._pool = None
        direct = getattr(self, "_direct", None)
        if direct and self._pid == os.getpid():
            for fd in direct[0]:
                os.close(fd)
        self._direct = None
        if self._pid == os.getpid():
            for path in self.shard_dirs:
                _release(path)
        self.envs = []

    def __enter__(self) -> FeatureStoreReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(path: str | Path, expect: dict | None = None) -> FeatureStoreReader:
    """Open a cache folder read-only (lock=False, readahead on); refuse mismatched or incomplete ones.

    `expect` maps metadata fields (dataset, backbone, weights, image_size, dtype, count, shape...)
    to the values the caller needs; each differing field is named in the CacheMismatchError.
    """
    return FeatureStoreReader(path, expect=expect)


def _folder_metadata(folder: Path) -> dict | None:
    """Metadata of the first shard of a cache folder that has any."""
    for path in _find_shard_dirs(folder):
        env = _acquire(path)
        try:
            meta = read_metadata(env)
        finally:
            _release(path)
        if meta is not None:
            return meta
    return None


def list_caches(cache_dir: str | Path | None) -> list[tuple[Path, dict]]:
    """(folder, metadata) for every cache folder directly under cache_dir."""
    root = default_cache_dir(cache_dir)
    if not root.is_dir():
        return []
    found = ((folder, _folder_metadata(folder)) for folder in sorted(p for p in root.iterdir() if p.is_dir()))
    return [(folder, meta) for folder, meta in found if meta is not None]


def _build_hint(dataset: str, root: Path) -> str:
    return (
        f"build it with: python -m harness.features extract --dataset {dataset} --data-root DIR"
        f"{'' if str(root) == 'cache' else f' --cache-dir {root}'} (or import the authors' HDF5: "
        f"python -m harness.features import-hdf5 --dataset {dataset} --file FILE)"
    )


def find_cache(cache_dir: str | Path | None, dataset: str, expect: dict | None = None) -> FeatureStoreReader:
    """The cache of `dataset` under cache_dir (or cache_dir itself when it is a cache folder).

    Among several caches of the dataset, those matching `expect` are kept; a remaining tie goes
    to the one built with the CacheKey defaults (resnet101, imagenet, 224, float16).
    """
    root = default_cache_dir(cache_dir)
    expect = dict(expect or {})
    if _find_shard_dirs(root):  # the user pointed at one cache folder
        return open_store(root, {"dataset": dataset, **expect})
    candidates = [(f, m) for f, m in list_caches(root) if m.get("dataset") == dataset]
    if not candidates:
        raise InputError(f"no feature cache for {dataset!r} under {root}/; {_build_hint(dataset, root)}")
    identity = {k: v for k, v in expect.items() if k in IDENTITY_FIELDS}
    matching = [(f, m) for f, m in candidates if not metadata_differences(m, identity)]
    if not matching:
        folder, meta = candidates[0]
        diffs = "; ".join(metadata_differences(meta, identity))
        others = f" (and {len(candidates) - 1} other caches)" if len(candidates) > 1 else ""
        raise CacheMismatchError(
            f"the feature cache of {dataset!r} under {root}/ was built with other settings: {folder.name}: "
            f"{diffs}{others}; {_build_hint(dataset, root)} with the settings you asked for"
        )
    if len(matching) > 1:
        defaults = CacheKey(dataset).as_dict()
        scores = [sum(m.get(k) == v for k, v in defaults.items()) for _, m in matching]
        best = max(scores)
        if scores.count(best) > 1:
            names = ", ".join(f.name for (f, _), s in zip(matching, scores, strict=True) if s == best)
            raise InputError(
                f"several feature caches of {dataset!r} under {root}/ ({names}); pass --cache-dir "
                f"{root}/<one of them> to choose"
            )
        matching = [matching[scores.index(best)]]
    return open_store(matching[0][0], {"dataset": dataset, **expect})
