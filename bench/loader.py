"""Feature reading vs training speed at DeepFashion's shape: does the store keep DAZLE fed?

Builds an LMDB cache of N random [2048, 7, 7] float16 maps labelled with 36 seen classes, then
measures, in one process:
1. reads: class-balanced batches (harness.data.sampling.ClassBalancedSampler: with 36 seen
   classes and batch 50, 36 images of 36 classes, as the authors' DeepFashion batches) read
   through PrefetchingBatches into preallocated (pinned on CUDA) tensors, nothing else done;
2. steps: DAZLE training steps (harness.methods.dazle: forward, the paper's loss, backward,
   RMSprop) on batches already on the device, 1000 attributes, 46 classes, 300-d vectors;
3. both together: the training loop fed by PrefetchingBatches (reading overlaps compute).
It prints reads/s over steps/s (target: at least 5x) and the steps/s of the fed loop.

    python bench/loader.py                    # CPU
    python bench/loader.py --device cuda      # on a GPU node

Run from the repository root with the project installed (`pip install -e .`), as
`python bench/loader.py`: it imports the project's packages as installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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
    with FeatureStoreWriter(folder, ident) as writer:
        for start in range(0, count, 100):
            n = min(100, count - start)
            block = rng.standard_normal((n, F, 7, 7), dtype=np.float32)
            writer.write_batch(range(start, start + n), np.maximum(block, 0, out=block))
        writer.finish()


def dazle(device):
    import torch

    from harness.config import TrainConfig
    from harness.methods import MethodSpec, build_method

    rng = np.random.default_rng(1)
    spec = MethodSpec(
        class_semantics=torch.from_numpy(rng.random((CLASSES, ATTRIBUTES), dtype=np.float32)),
        attribute_semantics=torch.from_numpy(rng.standard_normal((ATTRIBUTES, WORD_DIM), dtype=np.float32)),
        seen_classes=torch.arange(SEEN), unseen_classes=torch.arange(SEEN, CLASSES),
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dir", default=None, help="where to build the cache (default: a temporary folder, removed)")
    args = p.parse_args()

    import torch

    from harness.data.sampling import ClassBalancedSampler
    from harness.features.loader import PrefetchingBatches

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        folder = base / f"deepfashion-shape-{args.items}"
        t0 = time.perf_counter()
        build(folder, args.items)
        print(f"cache of {args.items} items [{F}, 7, 7] float16 ready in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        reader = open_store(folder)
        reader.read(np.arange(args.items))  # warm: the page cache holds the file, as after an epoch
        labels = np.random.default_rng(2).integers(0, SEEN, args.items)
        sampler = ClassBalancedSampler(labels, 50, seed=0)
        batch = len(sampler.next_batch())

        def endless():
            while True:
                yield sampler.next_batch()

        def reads():
            for _, x in PrefetchingBatches(reader, endless(), device):
                yield x

        read_rate = timed(reads(), args.seconds, sync)

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
        print(f"  reads  (LMDB -> PrefetchingBatches -> {device})   {read_rate:8.1f} batches/s")
        print(f"  steps  (DAZLE train_step, data on {device})       {step_rate:8.1f} steps/s")
        print(f"  fed    (train_step fed by PrefetchingBatches)     {fed_rate:8.1f} steps/s")
        verdict = "meets" if read_rate >= 5 * step_rate else "does NOT meet"
        print(f"ratio reads / steps: {read_rate / step_rate:.1f}x ({verdict} the 5x target); "
              f"fed loop at {fed_rate / step_rate:.0%} of the unfed step rate")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
