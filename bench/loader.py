"""Feature reading vs training speed at DeepFashion's shape: does the store keep DAZLE fed?

Builds an LMDB cache of N random [2048, 7, 7] float16 maps labelled with 36 seen classes, then
measures, in one process:
1. reads: class-balanced batches (harness.data.sampling.ClassBalancedSampler: with 36 seen
   classes and batch 50, 36 images of 36 classes, as the authors' DeepFashion batches) read
   through PrefetchingBatches into preallocated (pinned on CUDA) tensors, nothing else done;
2. steps: DAZLE training steps (harness.methods.dazle: forward, the paper's loss, backward,
   RMSprop) on batches already on the device, 1000 attributes, 46 classes, 300-d vectors;
3. both together: the training loop fed by PrefetchingBatches (reading overlaps compute).
It prints reads/s over steps/s (target: at least 5x) and the steps/s of the fed loop. Reads are
measured with the per-item CRC32 check on and off, interleaved; `--no-verify` turns it off for the
rest of the run.

With --cold, the cache file is evicted from the page cache first (posix_fadvise DONTNEED per file,
no root needed; --drop-caches also drops every cache, as root), and the run prints the disk's
random-read rate for item-sized reads (os.pread of an item's run of pages at random page-aligned
offsets, 1 and 4 in flight, each after a fresh eviction), then the loader's batches/s per
--window seconds, each window from cold (evicted again; --keep-cache: only at the start), the
4-in-flight probe again, and the loader's ratio to the mean of the two 4-in-flight probes
(issue 18's target: 0.8), then the trainer's steps/s. --lmdb-reads reads through LMDB's lookups
instead of the direct path (os.preadv at offsets from LMDB's B-tree).

With --resident, it compares the loader with features resident on --device (one float16 tensor,
gathered by index) at CUB's and DeepFashion's shapes: each batch's cost on the consumer's side and
the fed loop's steps/s, rounds interleaved.

    python bench/loader.py                    # CPU
    python bench/loader.py --device cuda      # on a GPU node
    python bench/loader.py --items 150000 --cold --dir /big/disk   # a cache larger than memory
    python bench/loader.py --resident [--device cuda]               # resident features vs the loader

Run from the repository root with the project installed (`pip install -e .`), as
`python bench/loader.py`: it imports the project's packages as installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from harness.features import store
from harness.features.store import CacheKey, FeatureStoreWriter, open_store

ATTRIBUTES, CLASSES, SEEN, WORD_DIM, F, R = 1000, 46, 36, 300, 2048, 49


def build(folder: Path, count: int) -> None:
    try:
        if len(open_store(folder, {"count": count})) == count:
            return
    except Exception:  # noqa: BLE001 - absent or other settings: rebuild
        shutil.rmtree(folder, ignore_errors=True)
    ident = {**CacheKey("bench-deepfashion", weights="none").as_dict(), "weights_sha256": None,
             "preprocessing": "random", "shape": [F, 7, 7], "count": count, "command": "bench"}
    rng = np.random.default_rng(0)
    pool = np.maximum(rng.standard_normal((256, F, 7, 7), dtype=np.float32), 0)  # drawing every item costs
    with FeatureStoreWriter(folder, ident) as writer:                             # minutes at 150,000 items
        for start in range(0, count, 100):
            n = min(100, count - start)
            block = pool[rng.integers(0, len(pool), n)]
            block[:, 0, 0, 0] = np.arange(start, start + n) % 1024  # no two items alike
            writer.write_batch(range(start, start + n), block)
        writer.finish()


def dazle(device, attributes: int = ATTRIBUTES, classes: int = CLASSES, seen: int = SEEN):
    import torch

    from harness.config import TrainConfig
    from harness.methods import MethodSpec, build_method

    rng = np.random.default_rng(1)
    spec = MethodSpec(
        class_semantics=torch.from_numpy(rng.random((classes, attributes), dtype=np.float32)),
        attribute_semantics=torch.from_numpy(rng.standard_normal((attributes, WORD_DIM), dtype=np.float32)),
        seen_classes=torch.arange(seen), unseen_classes=torch.arange(seen, classes),
        feature_dim=F, num_regions=R,
    )
    return build_method("dazle", spec, TrainConfig(device=str(device)), device)


def timed(loop, seconds: float, sync) -> float:
    """Iterations per second of the generator `loop` over about `seconds` (after 2 warm-up ones)."""
    it = iter(loop)
    for _ in range(2):
        next(it)
    sync()
    started, n = time.perf_counter(), 0
    for _ in it:
        n += 1
        if time.perf_counter() - started > seconds:
            break
    sync()
    return n / (time.perf_counter() - started)


def data_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*/data.mdb"))


def evict(folder: Path, drop_all: bool, reader=None) -> None:
    """Drop the cache's pages from the page cache (pages mapped by a process stay, so the reader
    unmaps its view first)."""
    if reader is not None:
        reader.release_pages()
    for path in data_files(folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if drop_all:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def random_spots(folder: Path, item_bytes: int, n: int, seed: int = 3) -> list[tuple[Path, int, int]]:
    """(data.mdb, offset, length): `n` page-aligned blocks of an item's size (its run of pages) at
    random places in the cache's files; LMDB is not asked, so nothing is read to find them."""
    from harness.features.store import CRC_BYTES

    length = -(-(item_bytes + CRC_BYTES + 16) // 4096) * 4096
    rng = np.random.default_rng(seed)
    files = data_files(folder)
    out = []
    for k in rng.integers(0, len(files), n):
        pages = (files[k].stat().st_size - length) // 4096
        out.append((files[k], int(rng.integers(0, pages)) * 4096, length))
    return out


def pread_probe(spots, in_flight: int, seconds: float) -> float:
    """Items/s of plain os.pread calls at `spots`, `in_flight` threads each reading its share in turn
    (POSIX_FADV_RANDOM: exactly the item's bytes, no read-ahead)."""
    fds = {path: os.open(path, os.O_RDONLY) for path in {p for p, _, _ in spots}}
    for fd in fds.values():
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    done = [0] * in_flight
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        for path, offset, length in spots[k::in_flight]:
            if time.perf_counter() > stop:
                return
            os.pread(fds[path], length, offset)
            done[k] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(in_flight)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for fd in fds.values():
        os.close(fd)
    return sum(done) / elapsed


def cold_reads(folder: Path, reader, endless, device, batch: int, args) -> float:
    """The disk's random-read rate (pread probe, 1 and 4 in flight) and the loader's batches/s per
    window from cold; returns the probe's 4-in-flight rate in batches/s."""
    from harness.features.loader import PrefetchingBatches

    spots = random_spots(folder, reader.item_bytes, 100000)
    size = spots[0][2]
    rates = {}
    for in_flight in (1, 4):
        evict(folder, args.drop_caches, reader)
        rates[in_flight] = pread_probe(spots, in_flight, args.window)
        print(f"  probe  pread {size / 1024:.0f} KiB at random offsets, {in_flight} in flight: "
              f"{rates[in_flight]:7.0f} items/s = {rates[in_flight] * size / 2**20:6.0f} MiB/s = "
              f"{rates[in_flight] / batch:6.1f} batches of {batch}/s", flush=True)
    probe = rates[4] / batch
    evict(folder, args.drop_caches, reader)
    windows, n, started = [], 0, time.perf_counter()
    edge = started + args.window
    for _ in PrefetchingBatches(reader, endless(), device):
        n += 1
        now = time.perf_counter()
        if now >= edge:
            windows.append(n / (now - edge + args.window))
            print(f"  loader window {len(windows)} ({now - started:5.1f} s from cold): {windows[-1]:6.1f} batches/s "
                  f"= {windows[-1] / probe:.2f} of the probe", flush=True)
            if now - started >= args.cold_seconds:
                break
            if not args.keep_cache:  # every window from cold: no item read twice from memory
                evict(folder, args.drop_caches, reader)
            n, edge = 0, time.perf_counter() + args.window
    mean = float(np.mean(windows))
    evict(folder, args.drop_caches, reader)  # the disk again, after the loader: the load drifts
    after = pread_probe(spots[::-1], 4, args.window) / batch
    print(f"  probe  pread {size / 1024:.0f} KiB at random offsets, 4 in flight, after the loader: "
          f"{after * batch:7.0f} items/s = {after * batch * size / 2**20:6.0f} MiB/s = {after:6.1f} batches of {batch}/s",
          flush=True)
    reference = (probe + after) / 2
    print(f"loader from cold, mean of {len(windows)} windows: {mean:.1f} batches/s; ratio loader / probe (4 in flight, "
          f"mean of before and after, {reference:.1f} batches/s): {mean / reference:.2f} (target 0.8); against the probe "
          f"before {mean / probe:.2f}, after {mean / after:.2f}; windows {min(windows) / reference:.2f}-"
          f"{max(windows) / reference:.2f}", flush=True)
    return reference


# (name, attributes, classes, seen classes): the class-balanced batch has min(seen, 50) images
RESIDENT_SHAPES = (("CUB", 312, 200, 150), ("DeepFashion", 1000, 46, 36))


def resident_bench(reader, device, args) -> None:
    """--resident: per-batch cost of the loader's read (and host copy) against a gather from the
    resident tensor, and the fed loop's steps/s with each, at CUB's and DeepFashion's shapes; rounds
    interleaved (the load on a shared host drifts), best round shown."""
    import torch

    from harness.data.sampling import ClassBalancedSampler
    from harness.features.loader import PrefetchingBatches, make_resident

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reader.read(np.arange(args.items))  # warm, as after an epoch: the loader's best case
    t0 = time.perf_counter()
    resident, why = make_resident(reader, np.arange(args.items), device, mode="on")
    print(f"{why}; loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    if resident is None:
        return
    for name, attributes, classes, seen in RESIDENT_SHAPES:
        labels = np.random.default_rng(2).integers(0, seen, args.items)
        sampler = ClassBalancedSampler(labels, 50, seed=0)
        batch = len(sampler.next_batch())

        def endless(sampler=sampler):
            while True:
                yield sampler.next_batch()

        def loader(kind):
            return PrefetchingBatches(reader, endless(), device) if kind == "cache" else resident.batches(endless())

        # the batch's cost on the consumer's side, nothing else running: read+check+copy vs gather
        cost = {"cache": [], "resident": []}
        for _ in range(3):
            for kind in cost:
                indices = [sampler.next_batch() for _ in range(20)]
                if kind == "cache":
                    buf = torch.empty((batch, F, R), dtype=torch.float32, pin_memory=device.type == "cuda")
                    started = time.perf_counter()
                    for idx in indices:
                        reader.read_into(idx, buf)
                        buf.to(device, non_blocking=True)
                else:
                    started = time.perf_counter()
                    for idx in indices:
                        resident.gather(idx)
                sync()
                cost[kind].append((time.perf_counter() - started) / len(indices) * 1e3)
        method = dazle(device, attributes, classes, seen)
        fed = {"cache": [], "resident": []}
        for _ in range(args.rounds):
            for kind in fed:

                def steps(kind=kind, method=method, labels=labels, seen=seen):
                    for positions, x in loader(kind):
                        yield method.train_step(x, torch.from_numpy(labels[positions] % seen).to(device))

                fed[kind].append(timed(steps(), args.seconds, sync))
        print(f"{name} shape (A={attributes}, C={classes}, batch {batch}), {device}, torch threads "
              f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}:")
        print(f"  per batch: cache read + check + copy {min(cost['cache']):6.2f} ms, resident gather "
              f"{min(cost['resident']):6.2f} ms: {min(cost['cache']) - min(cost['resident']):.2f} ms a batch removed "
              f"(rounds {', '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(cost['cache'], cost['resident'], strict=True))})")
        print(f"  fed loop: cache {max(fed['cache']):6.2f} steps/s, resident {max(fed['resident']):6.2f} steps/s "
              f"({max(fed['resident']) / max(fed['cache']):.2f}x; rounds "
              f"{', '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(fed['cache'], fed['resident'], strict=True))})",
              flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dir", default=None, help="where to build the cache (default: a temporary folder, removed)")
    p.add_argument("--no-verify", action="store_true", help="skip the per-item CRC32 check (fed loop, cold reads)")
    p.add_argument("--cold", action="store_true", help="evict the cache first; probe the disk; loader per window")
    p.add_argument("--window", type=float, default=10.0, help="--cold: seconds per window and per probe")
    p.add_argument("--cold-seconds", type=float, default=60.0, help="--cold: how long the loader reads")
    p.add_argument("--drop-caches", action="store_true", help="--cold: also drop all caches (root)")
    p.add_argument("--keep-cache", action="store_true",
                   help="--cold: evict once at the start only (later windows then find items read before in memory)")
    p.add_argument("--no-readahead", action="store_true", help="open LMDB with readahead=False (MADV_RANDOM)")
    p.add_argument("--read-threads", type=int, default=None, help="the reader's threads (default: its own)")
    p.add_argument("--no-request-ahead", action="store_true",
                   help="read item by item as the loader did before (no MADV_WILLNEED for the batch)")
    p.add_argument("--resident", action="store_true",
                   help="compare features resident on --device (gathered by index) with the cache loader at "
                        "CUB's and DeepFashion's shapes: per-batch cost and fed-loop steps/s")
    p.add_argument("--rounds", type=int, default=3, help="--resident: interleaved rounds")
    p.add_argument("--lmdb-reads", action="store_true",
                   help="look items up through LMDB's map (the path before direct reads; implied where the "
                        "offset table cannot be built)")
    args = p.parse_args()

    import torch

    from harness.data.sampling import ClassBalancedSampler
    from harness.features.loader import PrefetchingBatches

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.no_readahead:
        store.READAHEAD = False
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        folder = base / f"deepfashion-shape-{args.items}"
        t0 = time.perf_counter()
        build(folder, args.items)
        print(f"cache of {args.items} items [{F}, 7, 7] float16 ready in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        reader = open_store(folder)
        reader.request_ahead = not args.no_request_ahead
        reader.direct_reads = not args.lmdb_reads
        if args.read_threads:
            reader.read_threads = args.read_threads
        if args.cold:
            evict(folder, args.drop_caches, reader)
        t0 = time.perf_counter()
        path = reader.read_path  # builds the offset table (direct reads) from LMDB's tree pages
        print(f"read path: {path}" + (f" (offset table of {reader.stored} items in {time.perf_counter() - t0:.2f} s"
                                      f"{' from cold' if args.cold else ''})" if path == "direct" else
                                      f" ({reader.read_path_reason or '--lmdb-reads'})"), flush=True)
        labels = np.random.default_rng(2).integers(0, SEEN, args.items)
        sampler = ClassBalancedSampler(labels, 50, seed=0)
        batch = len(sampler.next_batch())

        def endless():
            while True:
                yield sampler.next_batch()

        def reads():
            for _, x in PrefetchingBatches(reader, endless(), device):
                yield x

        if args.resident:
            resident_bench(reader, device, args)
            return 0
        if args.cold:
            print(f"cold reads: {args.items} items, {sum(f.stat().st_size for f in data_files(folder)) / 2**30:.1f} "
                  f"GiB on disk, RAM {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB, "
                  f"check {'off' if args.no_verify else 'on'}, request-ahead {'off' if args.no_request_ahead else 'on'}, "
                  f"read threads {reader.read_threads}, LMDB readahead {'off' if args.no_readahead else 'on'}, "
                  f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
            reader.verify_reads = not args.no_verify
            cold_reads(folder, reader, endless, device, batch, args)
            read_rates = {}
        else:
            reader.read(np.arange(args.items))  # warm: the page cache holds the file, as after an epoch
            read_rates = {True: [], False: []}
            for check in (True, False, True, False):  # interleaved: the load on a shared host drifts
                reader.verify_reads = check
                read_rates[check].append(timed(reads(), args.seconds / 2, sync))
            reader.verify_reads = not args.no_verify
            read_rate = max(read_rates[reader.verify_reads])

        method = dazle(device)
        x_fixed = torch.from_numpy(reader.read(sampler.next_batch())).to(device)
        y_fixed = torch.from_numpy(labels[:batch] % SEEN).to(device)

        def steps():
            while True:
                yield method.train_step(x_fixed, y_fixed)

        step_rate = timed(steps(), args.seconds, sync)

        def fed():
            for positions, x in PrefetchingBatches(reader, endless(), device):
                yield method.train_step(x, torch.from_numpy(labels[positions]).to(device))

        fed_rate = timed(fed(), args.seconds, sync)
        print(f"DeepFashion shape: batch {batch} (36 seen classes x 1), F={F}, R={R}, A={ATTRIBUTES}, "
              f"device {device}, torch threads {torch.get_num_threads()}")
        for check, rates in read_rates.items():
            print(f"  reads  (cache -> PrefetchingBatches -> {device}), CRC check {'on ' if check else 'off'}"
                  f"  {max(rates):8.1f} batches/s  (rounds: {', '.join(f'{r:.1f}' for r in rates)})")
        if read_rates:
            on, off = max(read_rates[True]), max(read_rates[False])
            print(f"  the check costs {1 - on / off:.0%} of the warm read rate ({1e3 / on - 1e3 / off:.2f} ms a batch)")
        print(f"  steps  (DAZLE train_step, data on {device})       {step_rate:8.1f} steps/s")
        print(f"  fed    (train_step fed by PrefetchingBatches)     {fed_rate:8.1f} steps/s"
              + (" (the cache partly cold)" if args.cold else ""))
        if read_rates:
            verdict = "meets" if read_rate >= 5 * step_rate else "does NOT meet"
            print(f"ratio reads / steps: {read_rate / step_rate:.1f}x ({verdict} the 5x target); "
                  f"fed loop at {fed_rate / step_rate:.0%} of the unfed step rate")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
