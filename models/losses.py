"""The paper's training losses (DAZLE, section 4.3, eq. 8-12).

eq. 8-9   cross-entropy over class scores (over all classes, or over seen classes only for the
          "cross-entropy on seen classes" variant);
eq. 10-11 self-calibration: push probability mass towards unseen classes after adding the
          margin (+1 unseen, -1 seen) to the scores;
eq. 12    total = cross-entropy + lambda * self-calibration.

The calibration term takes the log per image and then averages, as the paper writes it. The
authors' released code averages the unseen mass over the batch first and logs once; we follow
the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(scores: Tensor, labels: Tensor, class_subset: Tensor | None = None) -> Tensor:
    """eq. 8-9. With class_subset, the softmax runs over those classes only; labels stay global."""
    if class_subset is None:
        return F.cross_entropy(scores, labels)
    lookup = torch.full((scores.shape[1],), -1, dtype=torch.long, device=scores.device)
    lookup[class_subset] = torch.arange(len(class_subset), device=scores.device)
    local = lookup[labels]
    if (local < 0).any():
        raise ValueError("a label lies outside the class subset of the cross-entropy")
    return F.cross_entropy(scores[:, class_subset], local)


def self_calibration(scores: Tensor, margin: Tensor, unseen_classes: Tensor) -> Tensor:
    """eq. 10-11: mean over images of -log sum_{u unseen} softmax(s + margin)_u."""
    shifted = scores + margin
    log_unseen_mass = torch.logsumexp(shifted[:, unseen_classes], dim=1) - torch.logsumexp(shifted, dim=1)
    return -log_unseen_mass.mean()


def dazle_loss(
    scores: Tensor,
    labels: Tensor,
    *,
    margin: Tensor,
    seen_classes: Tensor,
    unseen_classes: Tensor,
    lam: float,
    calibrate: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """eq. 12. Returns (total, cross-entropy, calibration term).

    calibrate=False is the "cross-entropy on seen classes only" variant: the softmax covers the
    seen classes and there is no calibration term.
    """
    if not calibrate:
        ce = cross_entropy(scores, labels, seen_classes)
        zero = scores.new_zeros(())
        return ce, ce, zero
    ce = cross_entropy(scores, labels)
    cal = self_calibration(scores, margin, unseen_classes)
    return ce + lam * cal, ce, cal
