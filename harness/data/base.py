"""What every dataset adapter produces: labels, class and attribute semantics, split indices,
and a source of region features. Split views (splits.py) and trainers consume only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class FeatureSource(Protocol):
    """Region feature maps addressed by image index (0-based rows of the dataset)."""

    feature_dim: int
    num_regions: int

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> np.ndarray:
        """float32 [len(indices), feature_dim, num_regions] in the order of `indices`."""
        ...


class InMemoryFeatures:
    """Features held in one array, for generated data and small imports."""

    def __init__(self, maps: np.ndarray) -> None:
        if maps.ndim == 4:
            maps = maps.reshape(maps.shape[0], maps.shape[1], -1)
        self._maps = maps
        self.feature_dim = int(maps.shape[1])
        self.num_regions = int(maps.shape[2])

    def __len__(self) -> int:
        return len(self._maps)

    def read(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self._maps[np.asarray(indices)], dtype=np.float32)


class SplitLeakError(PermissionError):
    """A view was asked for an image outside the splits it was built from."""


class RestrictedFeatures:
    """A feature source that serves only an allow-list of images.

    The search view wraps the dataset's features in this so a trial physically cannot read a
    test image, whatever index it asks for.
    """

    def __init__(self, source: FeatureSource, allowed: np.ndarray) -> None:
        self._source = source
        self._allowed = np.zeros(len(source), dtype=bool)
        self._allowed[np.asarray(allowed, dtype=np.int64)] = True
        self.feature_dim = source.feature_dim
        self.num_regions = source.num_regions
        self.dtype = getattr(source, "dtype", None)

    def __len__(self) -> int:
        return len(self._source)

    def _check(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if not self._allowed[indices].all():
            bad = indices[~self._allowed[indices]][:5].tolist()
            raise SplitLeakError(f"images {bad} are outside this view's splits")
        return indices

    def allows(self, indices: np.ndarray) -> bool:
        return bool(self._allowed[np.asarray(indices, dtype=np.int64)].all())

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self._source.read(self._check(indices))

    def read_into(self, indices: np.ndarray, out):
        """The store's fast path into a preallocated tensor, behind the same allow-list."""
        import torch

        indices = self._check(indices)
        if hasattr(self._source, "read_into"):
            return self._source.read_into(indices, out)
        out[: len(indices)].copy_(torch.from_numpy(self._source.read(indices)))
        return out


@dataclass
class GZSLDataset:
    """A dataset in the GBU protocol's terms. Class ids are 0..C-1, image ids 0..N-1.

    `val_classes` are the validation classes (a subset of the seen classes) used by the search;
    `annotations` carries optional extras, e.g. synthetic data's true part regions.
    """

    name: str
    labels: np.ndarray  # [N] int64
    class_names: list[str]
    attribute_names: list[str]
    class_attributes: np.ndarray  # [C, A] raw, before L2 normalisation
    attribute_vectors: np.ndarray  # [A, D] initial v_a (word vectors)
    features: FeatureSource
    trainval_loc: np.ndarray
    test_seen_loc: np.ndarray
    test_unseen_loc: np.ndarray
    val_classes: np.ndarray
    default_epochs: int = 20
    feature_cache_id: str = "in-memory"
    annotations: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen_classes(self) -> np.ndarray:
        return np.unique(self.labels[self.trainval_loc])

    @property
    def unseen_classes(self) -> np.ndarray:
        return np.unique(self.labels[self.test_unseen_loc])

    @property
    def train_classes(self) -> np.ndarray:
        return np.setdiff1d(self.seen_classes, self.val_classes)

    def check(self) -> None:
        """Raise ValueError when the pieces disagree; adapters call this before returning."""
        n = len(self.labels)
        c, a = self.class_attributes.shape
        if len(self.features) != n:
            raise ValueError(f"{self.name}: {len(self.features)} feature maps for {n} labels")
        if c != len(self.class_names):
            raise ValueError(f"{self.name}: class_attributes has {c} rows for {len(self.class_names)} classes")
        if self.attribute_vectors.shape[0] != a or len(self.attribute_names) != a:
            raise ValueError(
                f"{self.name}: {a} attributes in class_attributes, {self.attribute_vectors.shape[0]} word "
                f"vectors, {len(self.attribute_names)} names"
            )
        for name in ("trainval_loc", "test_seen_loc", "test_unseen_loc"):
            loc = getattr(self, name)
            if len(loc) and (loc.min() < 0 or loc.max() >= n):
                raise ValueError(f"{self.name}: {name} indexes outside 0..{n - 1}")
        if np.intersect1d(self.seen_classes, self.unseen_classes).size:
            raise ValueError(f"{self.name}: seen and unseen classes overlap")
        if not np.isin(self.val_classes, self.seen_classes).all():
            raise ValueError(f"{self.name}: validation classes must be seen classes")
