"""The real datasets: what is read from --data-root, joined with features and word vectors.

`read_dataset_files` reads everything that comes from the data root (image list and order,
labels, class attributes, splits, validation classes) into a `DatasetFiles`; the feature
extractor uses it to know which images to cache, in which order (cache key i = image_paths[i]).
`load` joins it with the feature cache and the attribute word vectors into a GZSLDataset; the
registry's loaders of `cub`, `sun`, `awa2`, `cub-ss` and `deepfashion` (real_datasets.py) call
it. Nothing here writes a file, and nothing here knows the registry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data import deepfashion, xlsa17
from harness.data.base import FeatureSource, GZSLDataset
from harness.data.files import DatasetFiles, check_locs, choose_validation_classes, require_file
from harness.data.semantics import AttributeSemantics, attribute_vectors
from harness.data.wordvectors import read_vector_npz
from harness.errors import InputError

# Read by their importers from here before files.py existed (docs/datasets.md names
# harness.data.adapters.choose_validation_classes).
__all__ = ["DatasetFiles", "build_dataset", "check_locs", "choose_validation_classes", "load",
           "read_dataset_files", "read_semantics", "require_file"]


def _readers():
    return {
        "cub": lambda root, seed: xlsa17.read("cub", root, data_seed=seed),
        "sun": lambda root, seed: xlsa17.read("sun", root, data_seed=seed),
        "awa2": lambda root, seed: xlsa17.read("awa2", root, data_seed=seed),
        "cub-ss": lambda root, seed: xlsa17.read("cub", root, standard_split=True, data_seed=seed),
        "deepfashion": lambda root, seed: deepfashion.read(root, data_seed=seed),
    }


def _data_root(name: str, data_root: str | Path | None) -> Path:
    if data_root is None or str(data_root) == "":
        raise InputError(f"--data-root: dataset {name!r} reads its files from a data folder; expected "
                         "--data-root DIR (layouts in docs/datasets.md)")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise InputError(f"--data-root {root}: no such folder; expected the folder holding the {name} files")
    return root.resolve()


def read_semantics(files: DatasetFiles, word_vectors: str | Path) -> AttributeSemantics:
    """The attribute vectors for `files` from a word-vector file or an .npz of ready vectors."""
    path = Path(word_vectors).expanduser()
    if not files.attribute_names_known:
        if path.suffix.lower() != ".npz":
            raise InputError(f"--word-vectors {path}: the attribute names are needed to find their words, but "
                             f"{files.notes.get('attribute_names_file', 'the names file')} is missing")
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(n) for n in z["names"]] if "names" in z.files else []
        except (OSError, ValueError):
            names = []  # read_vector_npz names the problem
        if len(names) == len(files.attribute_names):
            files.attribute_names = names
        vectors = read_vector_npz(path, files.attribute_names)
        return AttributeSemantics(vectors, [[] for _ in files.attribute_names],
                                  [n for n, r in zip(files.attribute_names, vectors, strict=True) if not r.any()],
                                  str(path), "npz")
    return attribute_vectors(files.attribute_names, files.word_style, path)


def read_dataset_files(
    name: str, data_root: str | Path | None, word_vectors: str | Path | None = None, data_seed: int = 0
) -> DatasetFiles:
    """Read dataset `name` from `data_root`; with `word_vectors`, also its attribute vectors."""
    readers = _readers()
    if name not in readers:
        raise InputError(f"--dataset: {name!r} is not a dataset read from files; expected one of "
                         f"{', '.join(sorted(readers))}")
    files = readers[name](_data_root(name, data_root), data_seed)
    if word_vectors is not None:
        files.semantics = read_semantics(files, word_vectors)
        files.notes.update(files.semantics.record())
    return files


def build_dataset(files: DatasetFiles, features: FeatureSource, semantics: AttributeSemantics,
                  feature_cache_id: str = "") -> GZSLDataset:
    """Join the files, a feature source with one item per image, and the attribute vectors."""
    if len(features) != files.num_images:
        raise InputError(
            f"feature cache {feature_cache_id or files.cache_name}: {len(features)} items, but the {files.name} "
            f"files list {files.num_images} images; expected a cache extracted from these files "
            f"(python -m harness.features extract --dataset {files.cache_name} --data-root ...)"
        )
    # Images that extraction skipped (--skip-bad) leave every split; the run records which.
    skipped = np.array(sorted(int(k) for k in getattr(features, "skipped", {}) or {}), dtype=np.int64)

    def kept(loc: np.ndarray) -> np.ndarray:
        return loc[~np.isin(loc, skipped)] if len(skipped) else loc

    notes = dict(files.notes)
    if len(skipped):
        notes["skipped_images"] = [str(files.image_paths[i]) for i in skipped[:50]]
        notes["skipped_count"] = int(len(skipped))
    dataset = GZSLDataset(
        name=files.name,
        labels=files.labels,
        class_names=files.class_names,
        attribute_names=files.attribute_names,
        class_attributes=np.asarray(files.class_attributes, dtype=np.float32),
        attribute_vectors=semantics.vectors,
        features=features,
        trainval_loc=kept(files.trainval_loc),
        test_seen_loc=kept(files.test_seen_loc),
        test_unseen_loc=kept(files.test_unseen_loc),
        val_classes=files.val_classes,
        default_epochs=files.default_epochs,
        feature_cache_id=feature_cache_id or files.cache_name,
        annotations={"notes": {**notes, **semantics.record()}, "attribute_words": semantics.words},
    )
    try:
        dataset.check()
    except ValueError as err:
        raise InputError(f"--data-root: the {files.name} files disagree: {err}") from None
    return dataset


def _open_features(files: DatasetFiles, cache_dir: str | Path | None) -> tuple[FeatureSource, str]:
    """The dataset's feature cache; cub-ss reads cub's (same images, same order), or its own if built."""
    from harness.features.store import find_cache

    try:
        reader = find_cache(cache_dir, files.cache_name, {"count": files.num_images})
    except InputError:
        if files.cache_name == files.name:
            raise
        try:
            reader = find_cache(cache_dir, files.name, {"count": files.num_images})
        except InputError:
            raise InputError(f"no feature cache for {files.name!r} (it reads the cache of {files.cache_name!r}): "
                             f"build it with python -m harness.features extract --dataset {files.cache_name} "
                             "--data-root ...") from None
    return reader, str(getattr(reader, "cache_id", "") or files.cache_name)


def load(name: str, data_root: str | Path | None = None, cache_dir: str | Path | None = None,
         word_vectors: str | Path | None = None, data_seed: int = 0) -> GZSLDataset:
    """The registered loader of every real dataset: files + feature cache + word vectors."""
    root = _data_root(name, data_root)
    if word_vectors is None or str(word_vectors) == "":
        raise InputError(f"--word-vectors: dataset {name!r} needs the attribute word vectors; expected "
                         "--word-vectors FILE (GloVe or word2vec text, word2vec .bin, or an .npz of vectors)")
    files = read_dataset_files(name, root, word_vectors, data_seed)
    assert files.semantics is not None
    features, cache_id = _open_features(files, cache_dir)
    return build_dataset(files, features, files.semantics, cache_id)
