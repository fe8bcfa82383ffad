"""Evaluation metrics of the GBU protocol (Xian et al.) plus the seen-unseen curve (Chao et al.).

Accuracy is always the mean of per-class top-1 accuracies: fine-grained test sets are
imbalanced, and per-sample accuracy would reward the big classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in `labels` of the fraction predicted correctly."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    classes, inverse = np.unique(labels, return_inverse=True)
    correct = np.bincount(inverse, weights=(predictions == labels).astype(np.float64), minlength=len(classes))
    counts = np.bincount(inverse, minlength=len(classes))
    return float(np.mean(correct / counts))


def harmonic_mean(acc_seen: float, acc_unseen: float) -> float:
    total = acc_seen + acc_unseen
    return 0.0 if total <= 0 else 2.0 * acc_seen * acc_unseen / total


def zsl_top1(scores_unseen_images: np.ndarray, labels: np.ndarray, unseen_classes: np.ndarray) -> float:
    """ZSL: unseen test images, predictions restricted to the unseen classes."""
    unseen_classes = np.asarray(unseen_classes)
    restricted = scores_unseen_images[:, unseen_classes]
    predictions = unseen_classes[np.argmax(restricted, axis=1)]
    return per_class_accuracy(predictions, labels)


def gzsl_accuracies(
    scores_seen_images: np.ndarray,
    labels_seen: np.ndarray,
    scores_unseen_images: np.ndarray,
    labels_unseen: np.ndarray,
    margin: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """GZSL acc_s, acc_u, H with predictions over all classes, after adding `margin` [C]."""
    if margin is not None:
        scores_seen_images = scores_seen_images + margin
        scores_unseen_images = scores_unseen_images + margin
    acc_s = per_class_accuracy(np.argmax(scores_seen_images, axis=1), labels_seen)
    acc_u = per_class_accuracy(np.argmax(scores_unseen_images, axis=1), labels_unseen)
    return acc_s, acc_u, harmonic_mean(acc_s, acc_u)


def _seen_unseen_gap(scores: np.ndarray, seen_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: best seen score minus best unseen score, and the arg-max within each group."""
    seen_idx = np.flatnonzero(seen_mask)
    unseen_idx = np.flatnonzero(~seen_mask)
    best_seen = seen_idx[np.argmax(scores[:, seen_idx], axis=1)]
    best_unseen = unseen_idx[np.argmax(scores[:, unseen_idx], axis=1)]
    rows = np.arange(len(scores))
    gap = scores[rows, best_seen] - scores[rows, best_unseen]
    return gap, best_seen, best_unseen


def _accuracy_over_shifts(
    gap: np.ndarray, best_seen: np.ndarray, best_unseen: np.ndarray, labels: np.ndarray, shifts: np.ndarray
) -> np.ndarray:
    """Per-class accuracy for each shift gamma (gamma subtracted from every seen score)."""
    if len(labels) == 0:  # e.g. a standard split without test-seen images
        return np.full(len(shifts), np.nan)
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes)).astype(np.float64)
    picks_seen = gap[None, :] > shifts[:, None]  # [G, N]: the seen arg-max wins
    correct = np.where(picks_seen, (best_seen == labels)[None, :], (best_unseen == labels)[None, :])
    per_class = np.zeros((len(shifts), len(classes)))
    for k in range(len(classes)):  # loop over classes, vectorised over shifts and images
        per_class[:, k] = correct[:, inverse == k].sum(axis=1) / counts[k]
    return per_class.mean(axis=1)


@dataclass
class SeenUnseenCurve:
    shifts: np.ndarray
    acc_seen: np.ndarray
    acc_unseen: np.ndarray
    ausuc: float


def seen_unseen_curve(
    scores_seen_images: np.ndarray,
    labels_seen: np.ndarray,
    scores_unseen_images: np.ndarray,
    labels_unseen: np.ndarray,
    seen_classes: np.ndarray,
    max_points: int = 512,
) -> SeenUnseenCurve:
    """acc_s and acc_u as the shift gamma subtracted from seen-class scores sweeps all values.

    The curve changes only where gamma crosses some image's gap between its best seen and best
    unseen score, so those gaps (thinned to `max_points` quantiles, plus both extremes) are the
    shifts. AUSUC is the trapezoid area under acc_s as a function of acc_u.
    """
    num_classes = scores_seen_images.shape[1]
    seen_mask = np.zeros(num_classes, dtype=bool)
    seen_mask[np.asarray(seen_classes)] = True
    gap_s, bs_s, bu_s = _seen_unseen_gap(scores_seen_images, seen_mask)
    gap_u, bs_u, bu_u = _seen_unseen_gap(scores_unseen_images, seen_mask)
    gaps = np.unique(np.concatenate([gap_s, gap_u]))
    if len(gaps) > max_points:
        gaps = np.quantile(gaps, np.linspace(0.0, 1.0, max_points))
    span = float(np.abs(gaps).max()) + 1.0 if len(gaps) else 1.0
    shifts = np.concatenate([[-span], gaps, [span]])
    acc_s = _accuracy_over_shifts(gap_s, bs_s, bu_s, labels_seen, shifts)
    acc_u = _accuracy_over_shifts(gap_u, bs_u, bu_u, labels_unseen, shifts)
    if np.isnan(acc_s).any() or np.isnan(acc_u).any():
        return SeenUnseenCurve(shifts, acc_s, acc_u, float("nan"))
    order = np.argsort(acc_u, kind="stable")
    ausuc = float(np.trapezoid(acc_s[order], acc_u[order]))
    return SeenUnseenCurve(shifts, acc_s, acc_u, ausuc)


def best_calibration_shift(curve: SeenUnseenCurve) -> float:
    """Calibrated stacking: the gamma with the highest H on the curve (use on validation only)."""
    h = np.array([harmonic_mean(s, u) for s, u in zip(curve.acc_seen, curve.acc_unseen, strict=True)])
    return float(curve.shifts[int(np.argmax(h))])


@dataclass
class GZSLMetrics:
    acc_seen: float
    acc_unseen: float
    H: float
    zsl_top1: float
    ausuc: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


def evaluate_scores(
    scores_seen_images: np.ndarray,
    labels_seen: np.ndarray,
    scores_unseen_images: np.ndarray,
    labels_unseen: np.ndarray,
    seen_classes: np.ndarray,
    unseen_classes: np.ndarray,
    margin: np.ndarray | None = None,
) -> tuple[GZSLMetrics, SeenUnseenCurve]:
    """All protocol numbers from raw scores: GZSL with `margin`, ZSL T1, the curve and AUSUC."""
    acc_s, acc_u, h = gzsl_accuracies(scores_seen_images, labels_seen, scores_unseen_images, labels_unseen, margin)
    t1 = zsl_top1(scores_unseen_images, labels_unseen, unseen_classes)
    curve = seen_unseen_curve(scores_seen_images, labels_seen, scores_unseen_images, labels_unseen, seen_classes)
    return GZSLMetrics(acc_s, acc_u, h, t1, curve.ausuc), curve
