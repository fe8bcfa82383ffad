"""Metrics on hand-computed cases: per-class vs per-sample, zero-accuracy classes, margins, AUSUC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import (
    best_calibration_shift,
    evaluate_scores,
    gzsl_accuracies,
    harmonic_mean,
    per_class_accuracy,
    seen_unseen_curve,
    zsl_top1,
)


def test_per_class_differs_from_per_sample_on_imbalanced_data():
    labels = np.array([0] * 8 + [1] * 2)
    predictions = np.array([0] * 8 + [0, 1])  # class 0: 8/8, class 1: 1/2
    assert per_class_accuracy(predictions, labels) == pytest.approx((1.0 + 0.5) / 2)
    assert np.mean(predictions == labels) == pytest.approx(0.9)


def test_class_with_zero_correct_predictions_counts_as_zero():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 0, 0, 2])  # class 1 never right
    assert per_class_accuracy(predictions, labels) == pytest.approx((1 + 0 + 1) / 3)


def test_harmonic_mean():
    assert harmonic_mean(0.279, 0.110) == pytest.approx(2 * 0.279 * 0.110 / 0.389)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_zsl_restricts_predictions_to_unseen_classes():
    scores = np.array([[9.0, 1.0, 2.0], [9.0, 3.0, 2.0]])  # seen class 0 dominates
    assert zsl_top1(scores, np.array([2, 1]), np.array([1, 2])) == pytest.approx(1.0)
    assert per_class_accuracy(scores.argmax(1), np.array([2, 1])) == 0.0  # unrestricted: always class 0
    assert zsl_top1(scores, np.array([1, 1]), np.array([1, 2])) == pytest.approx(0.5)


def test_gzsl_with_margin_flips_predictions_to_unseen():
    s_seen = np.array([[1.0, 0.5]])  # class 0 seen, class 1 unseen
    s_unseen = np.array([[1.0, 0.5]])
    margin = np.array([-1.0, 1.0])
    acc_s, acc_u, h = gzsl_accuracies(s_seen, np.array([0]), s_unseen, np.array([1]))
    assert (acc_s, acc_u, h) == (1.0, 0.0, 0.0)
    acc_s, acc_u, h = gzsl_accuracies(s_seen, np.array([0]), s_unseen, np.array([1]), margin)
    assert (acc_s, acc_u, h) == (0.0, 1.0, 0.0)


def test_seen_unseen_curve_end_points_and_area():
    # two seen classes (0, 1), one unseen (2); scores chosen so the curve is a known staircase
    s_seen = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.5]])
    y_seen = np.array([0, 1])
    s_unseen = np.array([[0.0, 1.0, 0.5], [2.0, 0.0, 1.8]])
    y_unseen = np.array([2, 2])
    curve = seen_unseen_curve(s_seen, y_seen, s_unseen, y_unseen, np.array([0, 1]))
    # gamma -> -inf: everything seen; gamma -> +inf: everything unseen
    assert curve.acc_seen[0] == 1.0 and curve.acc_unseen[0] == 0.0
    assert curve.acc_seen[-1] == 0.0 and curve.acc_unseen[-1] == 1.0
    # gaps: seen images 2.0, 0.5; unseen images 0.5, 0.2. Points (u, s): (0,1) (0.5,1) (1,0.5) (1,0)
    # area under s(u): 0.5*1 + 0.5*(1+0.5)/2 = 0.875
    assert curve.ausuc == pytest.approx(0.875)


def test_best_shift_maximises_h():
    s_seen = np.array([[2.0, 1.0]])
    s_unseen = np.array([[2.0, 1.0]])  # unseen image loses by 1
    curve = seen_unseen_curve(s_seen, np.array([0]), s_unseen, np.array([1]), np.array([0]))
    gamma = best_calibration_shift(curve)
    # any gamma in [1, 1] region flips the unseen image; both images share the gap so H peaks at 0
    acc_s, acc_u, _ = gzsl_accuracies(s_seen, np.array([0]), s_unseen, np.array([1]), np.array([-gamma, 0.0]))
    assert max(acc_s, acc_u) == 1.0


def test_evaluate_scores_bundle():
    rng = np.random.default_rng(0)
    s_seen, s_unseen = rng.normal(size=(20, 5)), rng.normal(size=(10, 5))
    y_seen, y_unseen = rng.integers(0, 3, 20), rng.integers(3, 5, 10)
    metrics, curve = evaluate_scores(s_seen, y_seen, s_unseen, y_unseen, np.arange(3), np.array([3, 4]))
    assert math.isclose(metrics.H, harmonic_mean(metrics.acc_seen, metrics.acc_unseen))
    assert 0 <= metrics.ausuc <= 1 and metrics.ausuc == curve.ausuc
    assert set(metrics.as_dict("test_")) == {"test_acc_seen", "test_acc_unseen", "test_H", "test_zsl_top1",
                                             "test_ausuc"}
