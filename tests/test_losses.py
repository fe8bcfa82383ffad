"""The paper's losses on small hand-computed cases."""

from __future__ import annotations

import math

import torch

from models.losses import cross_entropy, dazle_loss, self_calibration

SCORES = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 3.0]])
LABELS = torch.tensor([0, 1])
SEEN = torch.tensor([0, 1])
UNSEEN = torch.tensor([2, 3])
MARGIN = torch.tensor([-1.0, -1.0, 1.0, 1.0])


def log_softmax(row: list[float], i: int) -> float:
    return row[i] - math.log(sum(math.exp(v) for v in row))


def test_cross_entropy_over_all_classes():
    expected = -(log_softmax([2, 0, 1, -1], 0) + log_softmax([0, 1, 0, 3], 1)) / 2
    assert math.isclose(cross_entropy(SCORES, LABELS).item(), expected, rel_tol=1e-6)


def test_cross_entropy_over_seen_classes_only():
    expected = -(log_softmax([2, 0], 0) + log_softmax([0, 1], 1)) / 2
    assert math.isclose(cross_entropy(SCORES, LABELS, SEEN).item(), expected, rel_tol=1e-6)


def test_self_calibration_takes_the_log_per_image():
    per_image = []
    for row in ([2, 0, 1, -1], [0, 1, 0, 3]):
        shifted = [v + m for v, m in zip(row, MARGIN.tolist(), strict=True)]
        total = sum(math.exp(v) for v in shifted)
        per_image.append(-math.log((math.exp(shifted[2]) + math.exp(shifted[3])) / total))
    expected = sum(per_image) / 2
    assert math.isclose(self_calibration(SCORES, MARGIN, UNSEEN).item(), expected, rel_tol=1e-6)
    # the released code's variant (mean mass, then one log) differs on this batch
    masses = [math.exp(-p) for p in per_image]
    assert not math.isclose(-math.log(sum(masses) / 2), expected, rel_tol=1e-3)


def test_total_is_ce_plus_lambda_calibration():
    total, ce, cal = dazle_loss(SCORES, LABELS, margin=MARGIN, seen_classes=SEEN, unseen_classes=UNSEEN, lam=0.3)
    assert math.isclose(total.item(), ce.item() + 0.3 * cal.item(), rel_tol=1e-6)
    assert cal.item() > 0


def test_seen_only_variant_has_no_calibration_term():
    total, ce, cal = dazle_loss(
        SCORES, LABELS, margin=MARGIN, seen_classes=SEEN, unseen_classes=UNSEEN, lam=0.3, calibrate=False
    )
    assert cal.item() == 0.0
    assert math.isclose(total.item(), cross_entropy(SCORES, LABELS, SEEN).item(), rel_tol=1e-6)


def test_calibration_pushes_mass_to_unseen():
    scores = SCORES.clone().requires_grad_(True)
    self_calibration(scores, MARGIN, UNSEEN).backward()
    assert (scores.grad[:, UNSEEN] < 0).all() and (scores.grad[:, SEEN] > 0).all()
