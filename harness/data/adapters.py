"""The real datasets: what is read from --data-root, and the registered loaders.

`read_dataset_files` reads everything that comes from the data root (image list and order,
labels, class attributes, splits, validation classes) into a `DatasetFiles`; the feature
extractor uses it to know which images to cache, in which order (cache key i = image_paths[i]).
The registered loaders (`cub`, `sun`, `awa2`, `cub-ss`, `deepfashion`) join it with the feature
cache and the attribute word vectors into a GZSLDataset. Nothing here writes a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data.base import FeatureSource, GZSLDataset
from harness.data.registry import register_dataset
from harness.data.semantics import AttributeSemantics, attribute_vectors
from harness.data.wordvectors import read_vector_npz
from harness.errors import InputError


@dataclass
class DatasetFiles:
    """Everything read from the data root, before features and word vectors."""

    name: str
    image_paths: list[Path]  # absolute, in the dataset's image order (= feature cache keys 0..N-1)
    labels: np.ndarray  # [N] int64, 0-based class ids
    class_names: list[str]
    attribute_names: list[str]
    class_attributes: np.ndarray  # [C, A] (xlsa17: original_att; DeepFashion: mapped and L2-normalised)
    trainval_loc: np.ndarray  # 0-based
    test_seen_loc: np.ndarray
    test_unseen_loc: np.ndarray
    val_classes: np.ndarray
    default_epochs: int
    notes: dict = field(default_factory=dict)  # provenance and recorded choices (validation classes, ...)
    word_style: str = ""  # tokenisation of attribute names (harness.data.semantics)
    cache_name: str = ""  # the feature cache to read: cub-ss shares cub's images, so cub's cache
    attribute_names_known: bool = True  # False: the names file was missing, names are placeholders
    semantics: AttributeSemantics | None = None  # set when read with word_vectors

    def __post_init__(self) -> None:
        if not self.cache_name:
            self.cache_name = self.name

    @property
    def num_images(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------- helpers shared by the readers


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else an InputError naming it and what it should hold."""
    if not path.is_file():
        raise InputError(f"{path}: missing; expected {what}")
    return path


def choose_validation_classes(seen: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The recorded rule where a split publishes no validation classes: `count` of the seen
    class ids (sorted) drawn without replacement by numpy.random.default_rng(seed), sorted."""
    seen = np.sort(np.asarray(seen, dtype=np.int64))
    if count >= len(seen):
        raise InputError(f"{count} validation classes asked for, but only {len(seen)} seen classes; "
                         "expected more seen classes than validation classes")
    rng = np.random.default_rng(seed)
    return np.sort(seen[rng.choice(len(seen), size=count, replace=False)])


def check_locs(path: Path, locs: dict[str, np.ndarray], num_images: int) -> None:
    """0-based split indices lie in 0..N-1 and the splits do not share an image."""
    for key, loc in locs.items():
        if len(loc) and (loc.min() < 0 or loc.max() >= num_images):
            raise InputError(f"{path}: {key} holds image numbers outside 1..{num_images}; expected indices "
                             f"into the {num_images} images of the image list")
        if len(np.unique(loc)) != len(loc):
            raise InputError(f"{path}: {key} lists an image twice; expected each image once")
    names = list(locs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if np.intersect1d(locs[a], locs[b]).size:
                raise InputError(f"{path}: {a} and {b} share images; expected disjoint splits")


# ---------------------------------------------------------------- reading and building


def _readers():
    # Imported here: the reader modules import DatasetFiles from this one.
    from harness.data import deepfashion, xlsa17

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


def _register(name: str, description: str) -> None:
    @register_dataset(name, description)
    def loader(data_root: str | None = None, cache_dir: str | None = None, word_vectors: str | None = None,
               data_seed: int = 0) -> GZSLDataset:
        return load(name, data_root, cache_dir, word_vectors, data_seed)


_register("cub", "CUB-200-2011, xlsa17 proposed split (150 seen / 50 unseen, 312 attributes)")
_register("sun", "SUN attributes, xlsa17 proposed split (645 seen / 72 unseen, 102 attributes)")
_register("awa2", "Animals with Attributes 2, xlsa17 proposed split (40 seen / 10 unseen, 85 attributes)")
_register("cub-ss", "CUB-200-2011, standard split (150 / 50, ZSL only: no test-seen images)")
_register("deepfashion", "DeepFashion category/attribute benchmark (36 seen / 10 unseen, 1000 attributes)")
