"""Import features users already have into the store, so they need not re-extract.

- The authors' HDF5 feature maps (hbdat/cvpr20_DAZLE `extract_feature_map_ResNet_101_<DS>.py`):
  the flat CUB/SUN/AWA2 layout (`feature_map` [N, 2048, 7, 7] in xlsa17 res101.mat image order)
  and the per-category DeepFashion layout (`feature_map_train/<label>` + `img_train/<label>`,
  `feature_map_test_seen` / `_test_unseen` + `img_*`; `imgs` lists every image in the dataset's
  order, and an image's item index is its row in `imgs`).
- xlsa17 `res101.mat` holistic features ([2048 x N]) as [2048, 1, 1] items, backbone
  "resnet101-holistic", for the baselines.

The authors' files are gzip-compressed with automatic chunks: random reads from them are slow
(STACK.md), so they are read once, in storage order, in contiguous row blocks (never h5py fancy
indexing), and each block is one store transaction. Re-running resumes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import InputError
from harness.features.extract import sha256_file
from harness.features.store import DTYPES, CacheKey, FeatureStoreWriter, default_cache_dir

AUTHORS_PREPROCESSING = (
    "imported: the authors' ResNet-101 (torchvision pretrained) maps; resize short side 224, centre crop 224, "
    "ImageNet mean/std"
)
BLOCK_ROWS = 64


@dataclass
class ImportResult:
    folder: Path
    written: int
    already: int
    count: int
    complete: bool


def _bar(total: int, desc: str, progress: bool, unit: str = "img"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, disable=not progress)


def _hash(path: Path, progress: bool) -> str:
    if progress and path.stat().st_size > (256 << 20):
        print(f"hashing {path} (its sha256 names the cache) ...", file=sys.stderr)
    return sha256_file(path)


def _check_file(path: str | Path, option: str = "--file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    return path


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r", rdcc_nbytes=64 << 20)
    except OSError as err:
        raise InputError(f"--file {path}: not a readable HDF5 file ({err})") from None


def _strings(dataset) -> list[str]:
    values = dataset[()]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def _block_rows(dataset) -> int:
    chunk = dataset.chunks[0] if dataset.chunks else 1
    return max(chunk, (BLOCK_ROWS // chunk) * chunk)


def _copy_blocks(dataset, rows: np.ndarray, present: np.ndarray, writer: FeatureStoreWriter, bar,
                 name: str) -> int:
    """Copy dataset row r to item rows[r] for every item not yet present; returns items written."""
    if dataset.ndim != 4 or len(dataset) != len(rows):
        raise InputError(f"{writer.identity.get('source')}: {name} has shape {dataset.shape}, expected "
                         f"({len(rows)}, F, H, W)")
    step = _block_rows(dataset)
    written = 0
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        need = ~present[block]
        if not need.any():
            bar.update(len(block))
            continue
        values = dataset[start : start + len(block)]  # contiguous: decompresses each chunk once
        writer.write_batch(block[need], values[need])
        present[block[need]] = True
        written += int(need.sum())
        bar.update(len(block))
    return written


def _writer(path: Path, dataset: str, backbone: str, shape: list[int], count: int, dtype: str,
            cache_dir, command: str, preprocessing: str, progress: bool) -> FeatureStoreWriter:
    if dtype not in DTYPES:
        raise InputError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    digest = _hash(path, progress)
    key = CacheKey(dataset, backbone, f"imported:{digest[:12]}", 224, dtype)
    identity = {
        **key.as_dict(), "weights_sha256": None, "source_sha256": digest, "source": str(path.resolve()),
        "preprocessing": preprocessing, "shape": shape, "count": count, "command": command,
    }
    return FeatureStoreWriter(default_cache_dir(cache_dir) / key.folder_name(), identity)


def _finish(writer: FeatureStoreWriter, written: int, count: int) -> ImportResult:
    meta = writer.finish()
    present = len(writer.present())
    return ImportResult(writer.folder, written, present - written, count, bool(meta["complete"]))


def import_hdf5(path: str | Path, dataset: str, cache_dir: str | Path | None = None, dtype: str = "float16",
                progress: bool = True, command: str | None = None) -> ImportResult:
    """Import an authors' feature-map HDF5 file (flat or DeepFashion layout) into the store."""
    path = _check_file(path)
    command = command or f"python -m harness.features import-hdf5 --dataset {dataset} --file {path}"
    with _open_h5(path) as fh:
        if "feature_map" in fh:
            return _import_flat(fh, path, dataset, cache_dir, dtype, progress, command)
        if "feature_map_train" in fh and "imgs" in fh:
            return _import_per_category(fh, path, dataset, cache_dir, dtype, progress, command)
        raise InputError(
            f"--file {path}: expected the authors' layout: a 'feature_map' dataset (CUB/SUN/AWA2) or "
            f"'feature_map_train/<label>' groups with 'imgs' (DeepFashion); found keys {sorted(fh.keys())[:8]}"
        )


def _import_flat(fh, path, dataset, cache_dir, dtype, progress, command) -> ImportResult:
    maps = fh["feature_map"]
    if maps.ndim != 4:
        raise InputError(f"--file {path}: feature_map has shape {maps.shape}, expected (N, 2048, 7, 7)")
    count = int(maps.shape[0])
    writer = _writer(path, dataset, "resnet101", list(maps.shape[1:]), count, dtype, cache_dir, command,
                     AUTHORS_PREPROCESSING, progress)
    try:
        present = np.zeros(count, dtype=bool)
        present[writer.present()] = True
        with _bar(count, f"import {dataset}", progress) as bar:
            written = _copy_blocks(maps, np.arange(count), present, writer, bar, "feature_map")
        return _finish(writer, written, count)
    finally:
        writer.close()


def _category_blocks(fh, path) -> Iterable[tuple[str, object, object]]:
    """(name, feature dataset, image-name dataset) of every block in the per-category layout."""
    group, names = fh["feature_map_train"], fh.get("img_train")
    if names is None:
        raise InputError(f"--file {path}: feature_map_train has no matching img_train group")
    for label in sorted(group.keys(), key=lambda k: (len(k), k)):
        if label not in names:
            raise InputError(f"--file {path}: img_train/{label} is missing for feature_map_train/{label}")
        yield f"feature_map_train/{label}", group[label], names[label]
    for split in ("test_seen", "test_unseen"):
        if f"feature_map_{split}" in fh:
            if f"img_{split}" not in fh:
                raise InputError(f"--file {path}: img_{split} is missing for feature_map_{split}")
            yield f"feature_map_{split}", fh[f"feature_map_{split}"], fh[f"img_{split}"]


def _import_per_category(fh, path, dataset, cache_dir, dtype, progress, command) -> ImportResult:
    imgs = _strings(fh["imgs"])
    row_of = {name: i for i, name in enumerate(imgs)}
    if len(row_of) != len(imgs):
        raise InputError(f"--file {path}: 'imgs' lists {len(imgs) - len(row_of)} image names twice")
    blocks = list(_category_blocks(fh, path))
    shapes = {tuple(maps.shape[1:]) for _, maps, _ in blocks}
    if len(shapes) != 1:
        raise InputError(f"--file {path}: feature maps of different shapes {sorted(shapes)}")
    count = len(imgs)
    writer = _writer(path, dataset, "resnet101", list(shapes.pop()), count, dtype, cache_dir, command,
                     AUTHORS_PREPROCESSING, progress)
    try:
        # Map every block row to its item first, so a file that does not cover `imgs` writes nothing.
        covered = np.zeros(count, dtype=bool)
        block_rows = []
        for name, _, names in blocks:
            listed = _strings(names)
            unknown = [n for n in listed if n not in row_of]
            if unknown:
                raise InputError(f"--file {path}: {name} holds image {unknown[0]!r}, which 'imgs' does not list")
            rows = np.array([row_of[n] for n in listed], dtype=np.int64)
            covered[rows] = True
            block_rows.append(rows)
        if not covered.all():
            first = imgs[int(np.flatnonzero(~covered)[0])]
            raise InputError(f"--file {path}: {int((~covered).sum())} images of 'imgs' (e.g. {first!r}) have no "
                             f"feature map in any feature_map_* dataset")
        present = np.zeros(count, dtype=bool)
        present[writer.present()] = True
        written = 0
        with _bar(sum(len(rows) for rows in block_rows), f"import {dataset}", progress) as bar:
            for (name, maps, _), rows in zip(blocks, block_rows, strict=True):
                written += _copy_blocks(maps, rows, present, writer, bar, name)
        return _finish(writer, written, count)
    finally:
        writer.close()


def _read_res101(path: Path) -> np.ndarray:
    """features [2048, N] from an xlsa17 res101.mat (MATLAB v5, or v7.3 = HDF5)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["features"])
        features = mat.get("features")
    except NotImplementedError:  # v7.3: HDF5 stores MATLAB arrays transposed
        with _open_h5(path) as fh:
            features = np.asarray(fh["features"]).T if "features" in fh else None
    except Exception as err:  # noqa: BLE001 - scipy raises several types for a file that is not .mat
        raise InputError(f"--file {path}: not a readable .mat file ({err})") from None
    if features is None:
        raise InputError(f"--file {path}: no 'features' array (expected xlsa17 res101.mat: features [2048 x N])")
    features = np.asarray(features)
    if features.ndim != 2:
        raise InputError(f"--file {path}: features has shape {features.shape}, expected [2048 x N]")
    return features


def import_res101(path: str | Path, dataset: str, cache_dir: str | Path | None = None, dtype: str = "float16",
                  progress: bool = True, command: str | None = None, batch: int = 1024) -> ImportResult:
    """Import xlsa17 holistic features ([F x N]) as [F, 1, 1] items, backbone resnet101-holistic."""
    path = _check_file(path)
    command = command or f"python -m harness.features import-res101 --dataset {dataset} --file {path}"
    features = _read_res101(path)
    dim, count = (int(s) for s in features.shape)
    writer = _writer(path, dataset, "resnet101-holistic", [dim, 1, 1], count, dtype, cache_dir, command,
                     "imported: xlsa17 res101.mat holistic (average-pooled) ResNet-101 features", progress)
    try:
        present = np.zeros(count, dtype=bool)
        present[writer.present()] = True
        written = 0
        with _bar(count, f"import {dataset} res101", progress) as bar:
            for start in range(0, count, batch):
                rows = np.arange(start, min(start + batch, count))
                rows = rows[~present[rows]]
                if rows.size:
                    writer.write_batch(rows, features[:, rows].T.reshape(len(rows), dim, 1, 1))
                    written += rows.size
                bar.update(min(batch, count - start))
        return _finish(writer, written, count)
    finally:
        writer.close()
