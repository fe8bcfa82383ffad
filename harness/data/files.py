"""What a real dataset's reader returns, and the checks the readers share.

`DatasetFiles` holds everything read from a data root before features and word vectors join it.
The readers (xlsa17.py, deepfashion.py) build one; adapters.py turns it into a GZSLDataset. This
module imports no other dataset module, so every reader can use it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data.semantics import AttributeSemantics
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
