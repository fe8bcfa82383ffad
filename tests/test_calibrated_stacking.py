"""Calibrated stacking for every model: the seen-score shift is chosen on validation classes by a
search-stage fit that cannot read a test image, and is reported beside the unchanged raw numbers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from harness.config import TrainConfig
from harness.data.base import InMemoryFeatures, RestrictedFeatures, SplitLeakError
from harness.metrics import gzsl_accuracies, harmonic_mean
from harness.trainer import _validation_shift, calibrated_stacking, fit

MODELS = {
    "eszsl": {},
    "devise": {"lr": 1e-2, "epochs": 4},
    "dazle": {"epochs": 2},
}


def _without_test_images(ds):
    """The same dataset whose feature source refuses every image outside trainval."""
    return replace(ds, features=RestrictedFeatures(ds.features, ds.trainval_loc))


@pytest.mark.parametrize("model", list(MODELS))
def test_final_stage_reports_calibrated_beside_unchanged_raw_numbers(tiny_synthetic, model):
    config = TrainConfig(model=model, **MODELS[model])
    plain = fit(config, tiny_synthetic)
    calibrated = fit(replace(config, calibrated_stacking=True), tiny_synthetic)
    m = calibrated.metrics
    # The extra validation fit must not disturb the final run: raw numbers are identical.
    for key, value in plain.metrics.items():
        assert m[key] == value, key
    # The shift is the one a search-stage fit picks on validation classes ...
    shift = _validation_shift(config, tiny_synthetic)
    assert m["calibration_shift"] == shift
    assert calibrated.config.calibration_shift == shift
    # ... and the calibrated numbers are GZSL on the raw test scores with that shift on seen classes.
    view, scores = calibrated.view, calibrated.extras["scores"]
    penalty = np.zeros(view.num_classes, dtype=np.float32)
    penalty[view.seen_classes] = -shift
    expected = gzsl_accuracies(scores["scores_seen"], view.eval_seen_labels, scores["scores_unseen"],
                               view.eval_unseen_labels, penalty)
    assert (m["test_cs_acc_seen"], m["test_cs_acc_unseen"], m["test_cs_H"]) == pytest.approx(expected)
    assert m["test_cs_H"] == pytest.approx(harmonic_mean(m["test_cs_acc_seen"], m["test_cs_acc_unseen"]))


@pytest.mark.parametrize("model", ["eszsl", "devise"])
def test_the_shift_is_chosen_without_any_test_image(tiny_synthetic, model):
    config = TrainConfig(model=model, **MODELS[model])
    guarded = _without_test_images(tiny_synthetic)
    # The guard bites: a final-stage fit, which evaluates on test images, cannot run on it ...
    with pytest.raises(SplitLeakError):
        fit(config, guarded)
    # ... but choosing the shift can, and gives the same shift as with the test images readable.
    assert _validation_shift(config, guarded) == _validation_shift(config, tiny_synthetic)

    # Scrambling every test image's features leaves the shift unchanged too.
    maps = tiny_synthetic.features.read(np.arange(len(tiny_synthetic.labels)))
    test = np.concatenate([tiny_synthetic.test_seen_loc, tiny_synthetic.test_unseen_loc])
    maps[test] = np.random.default_rng(0).permutation(maps[test].reshape(-1)).reshape(maps[test].shape)
    scrambled = replace(tiny_synthetic, features=InMemoryFeatures(maps))
    assert _validation_shift(config, scrambled) == _validation_shift(config, tiny_synthetic)


def test_a_given_shift_is_used_as_is_and_no_search_fit_runs(tiny_synthetic):
    guarded = _without_test_images(tiny_synthetic)
    config = TrainConfig(model="eszsl", calibrated_stacking=True, calibration_shift=0.05)
    result = fit(config, tiny_synthetic)
    assert result.metrics["calibration_shift"] == 0.05
    expected = calibrated_stacking(result.extras["scores"], result.view, 0.05)
    assert result.metrics["test_cs_H"] == pytest.approx(expected[2])
    # A huge shift sends every image to an unseen class: seen accuracy 0 under calibration.
    huge = fit(replace(config, calibration_shift=1e6), tiny_synthetic).metrics
    assert huge["test_cs_acc_seen"] == 0.0 and huge["test_cs_acc_unseen"] == pytest.approx(huge["test_zsl_top1"])
    with pytest.raises(SplitLeakError):  # the final stage still reads test images, as it must
        fit(config, guarded)


@pytest.mark.parametrize("model", ["eszsl", "devise"])
def test_search_stage_calibration_is_the_best_point_of_the_validation_curve(tiny_synthetic, model):
    result = fit(TrainConfig(model=model, stage="search", calibrated_stacking=True, **MODELS[model]),
                 tiny_synthetic)
    m, curve = result.metrics, result.curve
    h = [harmonic_mean(s, u) for s, u in zip(curve.acc_seen, curve.acc_unseen, strict=True)]
    assert m["calibration_shift"] == m["val_best_shift"]
    assert m["val_cs_H"] == pytest.approx(max(h))
    assert m["val_cs_H"] >= m["val_H"] - 1e-9  # no model margin: shift 0 is one point of the sweep
    assert not any(k.startswith("test_") for k in m)
