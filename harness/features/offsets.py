"""Where each item's value lies in data.mdb, read from LMDB's B-tree pages without touching any item.

The reader's fast path (store.FeatureStoreReader, `direct_reads`) reads items with os.preadv
straight into the batch buffer instead of looking each one up through LMDB's memory map: on a
cold cache such a lookup faults the item's first page into the map, one fault at a time per
thread (12 ms with the kernel's read-ahead, 2.3 ms without, against 0.07 ms for a 4 KiB pread;
docs/performance.md). For that it needs a table from item index to the value's offset and length.

Asking LMDB for it does not help: a cursor over the keys (even with buffers=True, address minus the
map's base) reads every value's first page as it goes, 6 s for 3,000 items on a cold cache here,
minutes for DeepFashion. So the table is read from the B-tree itself: the two meta pages, then the
branch and leaf pages level by level (a few hundred KiB for 150,000 items), with pread. A leaf node
of a value stored on overflow pages holds the first page's number, so no item page is read.

LMDB's on-disk format (data version 1, as written by LMDB 0.9 on a 64-bit little-endian machine):
- a page starts with a 16-byte header: pgno (u64), pad (u16), flags (u16), lower (u16), upper (u16);
  for an overflow page, lower/upper are one u32, the number of pages of the run;
- pages 0 and 1 are meta pages; after the header: magic 0xBEEFC0DE (u32), version (u32), address,
  map size (u64 each), two 48-byte database records (free pages, main: pad u32 = page size in the
  first, flags u16, depth u16, branch, leaf and overflow page counts, entries, root, u64 each), the
  last page number and the transaction id (u64 each); the meta with the larger transaction id is
  the current one;
- a branch or leaf page's node offsets (u16, from the page start) follow its header, (lower - 16) / 2
  of them; a node is lo, hi, flags, key size (u16 each), then the key, then (leaf) the value or,
  with F_BIGDATA, the u64 number of its first overflow page; a branch node's child page number is
  lo | hi << 16 | flags << 32.

Everything read is checked against LMDB's own view of the environment (page size, depth, entries,
transaction id) and, for the first and last item, against LMDB's bytes; on any disagreement, or on
a machine of another layout, `TableUnavailable` says why and the reader keeps LMDB's path.
Offsets of stored values do not move until that value is rewritten (LMDB copies on write), and a
cache is read-only once built; the per-item CRC32 would catch a stale offset as damage.
"""

from __future__ import annotations

import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

MAGIC, DATA_VERSION = 0xBEEFC0DE, 1
PAGE_HEADER, NODE_HEADER = 16, 8
P_BRANCH, P_LEAF, P_OVERFLOW, P_LEAF2 = 0x01, 0x02, 0x04, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_DB_FIELDS = ("pad", "flags", "depth", "branch", "leaf", "overflow", "entries", "root")
_IN_FLIGHT = 8  # tree pages read at once (a cold cache: the disk serves several reads side by side)


class TableUnavailable(Exception):
    """The offset table cannot be built for this environment; the message says why."""


@dataclass
class ValueTable:
    """Items of one LMDB environment: keys (8-byte big-endian indices), where each value's bytes
    start in data.mdb, their length, and whether they start an overflow page run (page header
    16 bytes before them, which the reader checks)."""

    keys: np.ndarray  # int64
    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int64
    overflow: np.ndarray  # bool
    page_size: int


def supported() -> str | None:
    """None where the format's layout matches this machine; else why not."""
    if sys.byteorder != "little" or struct.calcsize("P") != 8:
        return "LMDB's page layout is read for 64-bit little-endian machines only"
    if not hasattr(os, "preadv"):
        return "os.preadv is not available on this platform"
    return None


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise TableUnavailable(f"data.mdb ends before byte {offset + length}")
    return data


def _meta(fd: int, offset: int) -> dict:
    raw = _pread(fd, PAGE_HEADER + _META.size, offset)
    fields = _META.unpack_from(raw, PAGE_HEADER)
    magic, version = fields[0], fields[1]
    if magic != MAGIC or version != DATA_VERSION:
        raise TableUnavailable(f"meta page at {offset}: magic {magic:#x} version {version} (expected "
                               f"{MAGIC:#x} version {DATA_VERSION})")
    free = dict(zip(_DB_FIELDS, fields[4:12], strict=True))
    main = dict(zip(_DB_FIELDS, fields[12:20], strict=True))
    return {"page_size": free["pad"], "main": main, "last_pgno": fields[20], "txnid": fields[21]}


def read_table(data_file: str | os.PathLike, expect: dict) -> ValueTable:
    """The value table of the environment in `data_file`; `expect` is LMDB's view of it
    (psize, depth, entries from Environment.stat(), last_txnid from Environment.info())."""
    why = supported()
    if why:
        raise TableUnavailable(why)
    fd = os.open(data_file, os.O_RDONLY)
    try:
        return _read_table(fd, expect)
    except (OSError, struct.error, IndexError) as err:
        raise TableUnavailable(f"cannot read LMDB's pages ({err})") from None
    finally:
        os.close(fd)


def _checked_meta(fd: int, expect: dict) -> tuple[int, dict]:
    """(page size, the main database's record) of the newest meta page, checked against LMDB's own view."""
    first = _meta(fd, 0)
    psize = first["page_size"]
    if psize != expect["psize"]:
        raise TableUnavailable(f"page size {psize} in the meta page, LMDB reports {expect['psize']}")
    meta = max(first, _meta(fd, psize), key=lambda m: m["txnid"])
    main = meta["main"]
    for name, ours, lmdbs in (("transaction id", meta["txnid"], expect["last_txnid"]),
                              ("tree depth", main["depth"], expect["depth"]),
                              ("entry count", main["entries"], expect["entries"])):
        if ours != lmdbs:
            raise TableUnavailable(f"{name} {ours} in the meta page, LMDB reports {lmdbs} (written since opened?)")
    if main["flags"]:  # dupsort, integer or reverse keys...: not what the store writes
        raise TableUnavailable(f"main database flags {main['flags']:#x} (expected plain keys and values)")
    return psize, main


@dataclass
class _Entries:
    """The leaf entries found so far, in key order."""

    keys: list = field(default_factory=list)
    offsets: list = field(default_factory=list)
    lengths: list = field(default_factory=list)
    overflow: list = field(default_factory=list)
    nodes: int = 0

    def add_leaf(self, page: bytes, pgno: int, psize: int, ptrs: tuple) -> None:
        base = pgno * psize
        self.nodes += len(ptrs)
        for ptr in ptrs:
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, ptr)
            if nflags & (F_SUBDATA | F_DUPDATA):
                raise TableUnavailable(f"page {pgno}: a sub-database or duplicate values")
            key = page[ptr + NODE_HEADER: ptr + NODE_HEADER + ksize]
            if ksize != 8:  # the metadata record
                continue
            self.keys.append(key)
            self.lengths.append(lo | hi << 16)
            at = ptr + NODE_HEADER + ksize
            if nflags & F_BIGDATA:
                self.offsets.append(struct.unpack_from("<Q", page, at)[0] * psize + PAGE_HEADER)
                self.overflow.append(True)
            else:
                self.offsets.append(base + at)
                self.overflow.append(False)


def _branch_children(page: bytes, ptrs: tuple) -> list[int]:
    children = []
    for ptr in ptrs:
        lo, hi, high = struct.unpack_from("<HHH", page, ptr)
        children.append(lo | hi << 16 | high << 32)
    return children


def _walk(fd: int, psize: int, main: dict) -> _Entries:
    """Every leaf entry of the main tree, level by level, reading only branch and leaf pages."""
    entries = _Entries()
    level = [main["root"]] if main["entries"] else []
    depth = 0
    with ThreadPoolExecutor(_IN_FLIGHT) as pool:
        while level:
            depth += 1
            if depth > main["depth"]:
                raise TableUnavailable(f"the tree is deeper than its stated depth {main['depth']}")
            pages = list(pool.map(lambda p: (p, _pread(fd, psize, p * psize)), level))
            level = []
            for pgno, page in pages:
                got, flags, lower = struct.unpack_from("<Q2xHH", page)
                if got != pgno or lower < PAGE_HEADER or lower > psize:
                    raise TableUnavailable(f"page {pgno}: header says page {got}, lower {lower}")
                ptrs = struct.unpack_from(f"<{(lower - PAGE_HEADER) // 2}H", page, PAGE_HEADER)
                kind = flags & (P_BRANCH | P_LEAF | P_LEAF2)
                if kind == P_BRANCH:
                    level.extend(_branch_children(page, ptrs))
                elif kind == P_LEAF:
                    if depth != main["depth"]:
                        raise TableUnavailable(f"leaf page {pgno} at depth {depth} of {main['depth']}")
                    entries.add_leaf(page, pgno, psize, ptrs)
                else:
                    raise TableUnavailable(f"page {pgno}: flags {flags:#x}, expected a branch or leaf page")
    return entries


def _read_table(fd: int, expect: dict) -> ValueTable:
    psize, main = _checked_meta(fd, expect)
    entries = _walk(fd, psize, main)
    if entries.nodes != main["entries"]:
        raise TableUnavailable(f"{entries.nodes} entries in the leaf pages, {main['entries']} in the meta page")
    out = ValueTable(
        keys=np.frombuffer(b"".join(entries.keys), dtype=">u8").astype(np.int64),
        offsets=np.array(entries.offsets, dtype=np.int64),
        lengths=np.array(entries.lengths, dtype=np.int64),
        overflow=np.array(entries.overflow, dtype=bool),
        page_size=psize,
    )
    size = os.fstat(fd).st_size
    if len(out.offsets) and int((out.offsets + out.lengths).max()) > size:
        raise TableUnavailable("a value's bytes would lie past the end of data.mdb")
    return out
