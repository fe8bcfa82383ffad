"""The two views of a dataset that training ever sees.

search view: fit on most images of the train classes; score GZSL with the held-out images of the
             train classes as "seen" and the validation classes' images as "unseen". Built from
             trainval_loc and the class lists only, so it holds no test index at all (xlsa17's
             own train_loc/val_loc are not used: on AWA2 they include test-seen images).
final view:  fit on trainval; score once on test_seen / test_unseen.

Each view renumbers its classes 0..C'-1 (the search view's universe is train + validation
classes) and carries a feature source that refuses any image outside its splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.data.base import GZSLDataset, RestrictedFeatures

SEARCH_HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class ProtocolView:
    stage: str  # "search" or "final"
    dataset_name: str
    class_ids: np.ndarray  # global class id of each local class
    class_attributes: np.ndarray  # [C', A] raw
    attribute_vectors: np.ndarray  # [A, D]
    attribute_names: list[str]
    seen_classes: np.ndarray  # local ids
    unseen_classes: np.ndarray  # local ids
    fit_indices: np.ndarray  # global image ids
    fit_labels: np.ndarray  # local class ids
    eval_seen_indices: np.ndarray
    eval_seen_labels: np.ndarray
    eval_unseen_indices: np.ndarray
    eval_unseen_labels: np.ndarray
    features: RestrictedFeatures

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def all_indices(self) -> np.ndarray:
        return np.concatenate([self.fit_indices, self.eval_seen_indices, self.eval_unseen_indices])


def _local_labels(global_labels: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    lookup = np.full(int(class_ids.max()) + 1, -1, dtype=np.int64)
    lookup[class_ids] = np.arange(len(class_ids))
    local = lookup[global_labels]
    assert (local >= 0).all()
    return local


def _build(
    ds: GZSLDataset,
    stage: str,
    seen: np.ndarray,
    unseen: np.ndarray,
    fit: np.ndarray,
    eval_seen: np.ndarray,
    eval_unseen: np.ndarray,
) -> ProtocolView:
    class_ids = np.concatenate([seen, unseen]).astype(np.int64)
    allowed = np.concatenate([fit, eval_seen, eval_unseen])
    return ProtocolView(
        stage=stage,
        dataset_name=ds.name,
        class_ids=class_ids,
        class_attributes=np.asarray(ds.class_attributes[class_ids], dtype=np.float32),
        attribute_vectors=np.asarray(ds.attribute_vectors, dtype=np.float32),
        attribute_names=list(ds.attribute_names),
        seen_classes=np.arange(len(seen)),
        unseen_classes=np.arange(len(seen), len(class_ids)),
        fit_indices=fit,
        fit_labels=_local_labels(ds.labels[fit], class_ids),
        eval_seen_indices=eval_seen,
        eval_seen_labels=_local_labels(ds.labels[eval_seen], class_ids),
        eval_unseen_indices=eval_unseen,
        eval_unseen_labels=_local_labels(ds.labels[eval_unseen], class_ids),
        features=RestrictedFeatures(ds.features, allowed),
    )


def search_view(ds: GZSLDataset, seed: int = 0) -> ProtocolView:
    """Train classes (minus a held-out fifth of each) vs validation classes; no test image."""
    trainval = np.sort(ds.trainval_loc)
    labels = ds.labels[trainval]
    train_classes = ds.train_classes
    val_classes = np.sort(ds.val_classes)
    rng = np.random.default_rng(seed)
    fit, held_out = [], []
    for c in train_classes:
        images = trainval[labels == c]
        images = images[rng.permutation(len(images))]
        n_hold = max(1, int(round(SEARCH_HOLDOUT_FRACTION * len(images)))) if len(images) > 1 else 0
        held_out.append(images[:n_hold])
        fit.append(images[n_hold:])
    eval_unseen = trainval[np.isin(labels, val_classes)]
    return _build(
        ds,
        "search",
        train_classes,
        val_classes,
        np.sort(np.concatenate(fit)),
        np.sort(np.concatenate(held_out)),
        eval_unseen,
    )


def final_view(ds: GZSLDataset) -> ProtocolView:
    """All seen classes on trainval; evaluated once on the test splits."""
    return _build(
        ds,
        "final",
        ds.seen_classes,
        ds.unseen_classes,
        np.sort(ds.trainval_loc),
        np.sort(ds.test_seen_loc),
        np.sort(ds.test_unseen_loc),
    )


def make_view(ds: GZSLDataset, stage: str, seed: int = 0) -> ProtocolView:
    if stage == "search":
        return search_view(ds, seed)
    if stage == "final":
        return final_view(ds)
    raise ValueError(f"stage must be 'search' or 'final', got {stage!r}")
