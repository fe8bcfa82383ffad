"""Class-balanced batch reads per second: the LMDB store vs the authors' gzip HDF5 file, in one run.

The same N feature maps (random ReLU-like, [2048, 7, 7]) are written twice: as the authors write
them (h5py, float32, compression="gzip", automatic chunks) and into the LMDB store (float16, as
`extract` does). Then the same class-balanced batches (harness.data.sampling.ClassBalancedSampler,
batch 50) are read from each into float32 arrays:

- LMDB: FeatureStoreReader.read_into a preallocated tensor;
- HDF5, per batch with fancy indexing: feature_map[sorted indices] (what a loader that reads
  batches from the authors' file does; their DeepFashion loader keeps training features on disk);
- HDF5, per batch item by item: feature_map[i] for each i (h5py's faster way for scattered rows).

The authors' CUB/SUN/AWA2 loaders instead read the whole file into memory once; that load time
and the memory it takes are printed too (batches are then free, but memory grows with the dataset:
4.7 GB for CUB, 15 GB for AWA2 in float32). All reads are warm (files in the page cache).

    python bench/lmdb_vs_hdf5.py               # 2,000 items (0.8 GB of float32 before compression)
    python bench/lmdb_vs_hdf5.py --items 500   # quicker

Run from the repository root with the project installed (`pip install -e .`), as
`python bench/lmdb_vs_hdf5.py`: it imports the project's packages as installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.data.sampling import ClassBalancedSampler
from harness.features.store import CacheKey, FeatureStoreWriter, open_store


def make_maps(count: int, feature_dim: int, seed: int):
    rng = np.random.default_rng(seed)
    for start in range(0, count, 250):
        n = min(250, count - start)
        block = rng.standard_normal((n, feature_dim, 7, 7), dtype=np.float32)
        yield start, np.maximum(block, 0, out=block)


def build(base: Path, count: int, feature_dim: int) -> tuple[Path, Path, float, float]:
    import h5py

    h5_path = base / "feature_map_ResNet_101_bench.hdf5"
    folder = base / "lmdb"
    t0 = time.perf_counter()
    with h5py.File(h5_path, "w") as fh:
        ds = fh.create_dataset("feature_map", shape=(count, feature_dim, 7, 7), dtype="float32",
                               compression="gzip", chunks=True)
        for start, block in make_maps(count, feature_dim, 0):
            ds[start : start + len(block)] = block
    t_h5 = time.perf_counter() - t0
    t0 = time.perf_counter()
    ident = {**CacheKey("bench", weights="none").as_dict(), "weights_sha256": None, "preprocessing": "random",
             "shape": [feature_dim, 7, 7], "count": count, "command": "bench"}
    with FeatureStoreWriter(folder, ident) as writer:
        for start, block in make_maps(count, feature_dim, 0):
            for s in range(0, len(block), 50):
                writer.write_batch(range(start + s, start + s + len(block[s : s + 50])), block[s : s + 50])
        writer.finish()
    return h5_path, folder, t_h5, time.perf_counter() - t0


def rate(fn, batches: list[np.ndarray], budget_s: float) -> tuple[float, int]:
    """Batches per second of fn over `batches` (stops once budget_s has passed)."""
    started = time.perf_counter()
    done = 0
    for idx in batches:
        fn(idx)
        done += 1
        if time.perf_counter() - started > budget_s:
            break
    return done / (time.perf_counter() - started), done


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--feature-dim", type=int, default=2048)
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--budget", type=float, default=10.0,
                   help="seconds per HDF5 method (one batch at least; a batch can take tens of seconds)")
    p.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder, removed)")
    args = p.parse_args()

    import h5py
    import torch

    torch.set_num_threads(1)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lmdb-vs-hdf5-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        h5_path, folder, t_h5, t_lmdb = build(base, args.items, args.feature_dim)
        print(f"wrote {args.items} maps [{args.feature_dim}, 7, 7]: HDF5 gzip {h5_path.stat().st_size / 2**20:.0f} MiB "
              f"in {t_h5:.1f} s; LMDB float16 {sum(f.stat().st_size for f in folder.rglob('*')) / 2**20:.0f} MiB "
              f"in {t_lmdb:.1f} s", file=sys.stderr)
        labels = np.random.default_rng(1).integers(0, args.classes, args.items)
        sampler = ClassBalancedSampler(labels, args.batch_size, seed=0)
        batches = [sampler.next_batch() for _ in range(args.batches)]
        n_max = max(len(b) for b in batches)

        reader = open_store(folder)
        out = torch.empty((n_max, args.feature_dim, 49))
        reader.read(np.arange(args.items))  # warm the page cache, as a second epoch is
        lmdb_rate, lmdb_n = rate(lambda idx: reader.read_into(idx, out), batches, 1e9)

        with h5py.File(h5_path, "r") as fh:
            ds = fh["feature_map"]
            chunks, ds_shape = ds.chunks, ds.shape
            ds[: min(args.items, 500)]  # warm

            def fancy(idx: np.ndarray) -> np.ndarray:
                order = np.argsort(idx)
                block = ds[np.sort(idx)]  # h5py needs increasing indices
                result = np.empty_like(block)
                result[order] = block
                return result

            def one_by_one(idx: np.ndarray) -> np.ndarray:
                return np.stack([ds[int(i)] for i in idx])

            np.testing.assert_allclose(fancy(batches[0]).reshape(-1, args.feature_dim, 49),
                                       reader.read(batches[0]), rtol=1e-3, atol=1e-3)
            fancy_rate, fancy_n = rate(fancy, batches, args.budget)
            single_rate, single_n = rate(one_by_one, batches, args.budget)
            t0 = time.perf_counter()
            whole = np.array(ds)  # the authors' CUB/SUN/AWA2 loader
            t_whole = time.perf_counter() - t0

        print(f"class-balanced batches of {args.batch_size} from {args.items} items, F={args.feature_dim}, R=49, warm:")
        print(f"  LMDB store (float16 -> float32, read_into)        {lmdb_rate:8.1f} batches/s  ({lmdb_n} batches)")
        print(f"  HDF5 gzip, fancy index per batch                  {fancy_rate:8.3f} batches/s  ({fancy_n} batches)")
        print(f"  HDF5 gzip, item by item per batch                 {single_rate:8.3f} batches/s  ({single_n} batches)")
        print(f"  (h5py's automatic chunks {chunks}: one image spans {int(np.prod(ds_shape[1:]) / np.prod(chunks[1:]))} "
              f"gzip chunks of {chunks[0]} images each)")
        print(f"  HDF5 whole file into memory (authors' CUB loader) {t_whole:8.1f} s once, "
              f"{whole.nbytes / 2**30:.2f} GiB of RAM ({whole.nbytes / args.items / 2**10:.0f} KiB an image)")
        print(f"ratio LMDB / HDF5 per batch: {lmdb_rate / fancy_rate:.0f}x (fancy indexing), "
              f"{lmdb_rate / single_rate:.0f}x (item by item)")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
