"""Peak memory of a training-like process as the feature cache grows 10x: nothing loads the cache whole.

Builds two LMDB caches (N and 10 N items of random ReLU-like maps), then runs, in a fresh
subprocess for each, what a trial does with its features: class-balanced batches drawn as
harness.data.sampling.ClassBalancedSampler draws them, read through PrefetchingBatches into
preallocated tensors, and a little compute on each batch. Both runs read the same number of
batches. For each run it prints:
- peak private memory (the peak of RssAnon, sampled every batch): what the process itself holds;
  the target is a large/small ratio within 10%;
- peak RSS (VmHWM), which Linux counts *including* the pages of the LMDB file mapped into the
  process. Those are the OS page cache: shared by every trial on the node, reclaimable, never
  copied into the process. They grow with the number of distinct items touched (and more, since
  the kernel maps whole folios around each fault), so this ratio is shown, not judged.

    python bench/feature_memory.py                      # 2,000 vs 20,000 items, F=512 (1 GB on disk)
    python bench/feature_memory.py --feature-dim 2048   # the real F: 4.4 GB on disk

F defaults to 512 to keep the large cache at 1 GB of disk and its build under a minute on a small
machine; what the process holds does not depend on the cache size either way.

Run from the repository root with the project installed (`pip install -e .`), as
`python bench/feature_memory.py`: it imports the project's packages as installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.features.store import CacheKey, FeatureStoreWriter, open_store


def build(folder: Path, count: int, feature_dim: int, classes: int, seed: int = 0) -> None:
    """A complete cache of `count` random maps (reused when a complete one is already there)."""
    try:
        if len(open_store(folder, {"count": count, "shape": [feature_dim, 7, 7]})) == count:
            return
    except Exception:  # noqa: BLE001 - absent or other settings: rebuild
        shutil.rmtree(folder, ignore_errors=True)
    ident = {**CacheKey(f"bench{count}", weights="none").as_dict(), "weights_sha256": None,
             "preprocessing": "random", "shape": [feature_dim, 7, 7], "count": count, "command": "bench"}
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(folder, ident) as writer:
        for start in range(0, count, 500):
            n = min(500, count - start)
            block = rng.standard_normal((n, feature_dim, 7, 7), dtype=np.float32)
            writer.write_batch(range(start, start + n), np.maximum(block, 0, out=block))
        writer.finish()
    np.save(folder / "labels.npy", np.random.default_rng(seed + 1).integers(0, classes, count))


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def worker(folder: Path, batches: int, batch_size: int) -> dict:
    """The training-like loop, run in its own process; returns its memory figures."""
    import torch

    from harness.data.sampling import ClassBalancedSampler
    from harness.features.loader import PrefetchingBatches

    torch.set_num_threads(1)
    reader = open_store(folder)
    labels = np.load(folder / "labels.npy")
    sampler = ClassBalancedSampler(labels, batch_size, seed=0)
    weight = torch.randn(reader.feature_dim, 16)
    baseline = _status()
    peak_anon = baseline["RssAnon"]
    started = time.perf_counter()
    total = 0.0
    draws = (sampler.next_batch() for _ in range(batches))
    for _, x in PrefetchingBatches(reader, draws, "cpu"):
        total += float((x.mean(-1) @ weight).sum())  # [B, F] @ [F, 16]
        peak_anon = max(peak_anon, _status()["RssAnon"])
    seconds = time.perf_counter() - started
    end = _status()
    return {"items": len(reader), "baseline_rss": baseline["VmRSS"], "peak_rss": end["VmHWM"],
            "peak_anon": peak_anon, "end_file": end["RssFile"], "batches_per_s": batches / seconds,
            "checksum": total}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=2000, help="size of the small cache (the large one is 10x)")
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--feature-dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--dir", default=None, help="where to build the caches (default: a temporary folder, removed)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.batches, args.batch_size)))
        return 0

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="feature-memory-"))
    try:
        runs = []
        for count in (args.items, args.items * args.factor):
            folder = base / f"n{count}_f{args.feature_dim}"
            t0 = time.perf_counter()
            build(folder, count, args.feature_dim, args.classes)
            print(f"cache of {count} items ({args.feature_dim}x7x7 float16) ready in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            out = subprocess.run([sys.executable, __file__, "--worker", str(folder), "--batches", str(args.batches),
                                  "--batch-size", str(args.batch_size)], check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        mib = 1 << 20
        print(f"{'items':>8} {'peak RSS':>10} {'peak private':>13} {'mapped file at end':>19} {'batches/s':>10}")
        for r in runs:
            print(f"{r['items']:>8} {r['peak_rss'] / mib:>8.0f} MiB {r['peak_anon'] / mib:>9.0f} MiB "
                  f"{r['end_file'] / mib:>15.0f} MiB {r['batches_per_s']:>10.0f}")
        small, large = runs
        ratio_rss = large["peak_rss"] / small["peak_rss"]
        ratio_anon = large["peak_anon"] / small["peak_anon"]
        verdict = "within 10%" if ratio_anon <= 1.10 else "NOT within 10%"
        print(f"cache {args.factor}x larger ({args.batches} batches of {args.batch_size}, F={args.feature_dim}, R=49): "
              f"peak private memory ratio {ratio_anon:.3f} ({verdict}); peak RSS ratio {ratio_rss:.3f} "
              f"(includes mapped page-cache pages of the cache file, shared and reclaimable)")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
