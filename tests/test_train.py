"""The trainer end to end on synthetic data: determinism, stages, CLI, bad input, divergence."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from harness.config import ConfigError, TrainConfig
from harness.data.registry import load_dataset
from harness.trainer import DivergenceError, fit


def test_same_seed_same_numbers(tiny_synthetic):
    config = TrainConfig(epochs=2, seed=5)
    a = fit(config, tiny_synthetic).metrics
    b = fit(config, tiny_synthetic).metrics
    c = fit(TrainConfig(epochs=2, seed=6), tiny_synthetic).metrics
    assert a == b
    assert a != c


def test_search_stage_reports_validation_each_epoch(tiny_synthetic):
    seen = []
    result = fit(TrainConfig(stage="search", epochs=3), tiny_synthetic, reporter=seen.append)
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert {"val_H", "val_acc_seen", "val_acc_unseen", "loss"} <= set(seen[0])
    assert "val_H" in result.metrics and "test_H" not in result.metrics
    assert "val_best_shift" in result.metrics


def test_training_learns_and_attention_finds_parts():
    ds = load_dataset("synthetic")
    result = fit(TrainConfig(seed=0), ds)  # the paper's defaults, 20 epochs: a few seconds
    m = result.metrics
    chance_zsl = 1 / len(ds.unseen_classes)
    assert m["test_zsl_top1"] > 2 * chance_zsl
    assert m["test_H"] > 0.1
    assert m["attention_hit_rate"] > 5 * m["attention_chance"]
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_num_attributes_selects_k(tiny_synthetic):
    result = fit(TrainConfig(epochs=1, num_attributes=10), tiny_synthetic)
    assert len(result.attributes) == 10
    assert result.method.module.V.shape[0] == 10
    with pytest.raises(ConfigError, match="--num-attributes"):
        fit(TrainConfig(epochs=1, num_attributes=10_000), tiny_synthetic)


def test_divergence_stops_with_the_step(tiny_synthetic):
    with pytest.raises(DivergenceError, match="epoch 1, step"):
        fit(TrainConfig(epochs=2, lr=1e30, momentum=0.0), tiny_synthetic)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.train", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_end_to_end_json():
    proc = _cli("--dataset", "synthetic", "--epochs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("acc_seen", "acc_unseen", "H", "zsl_top1", "ausuc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert math.isclose(metrics["H"], 2 * metrics["acc_seen"] * metrics["acc_unseen"] /
                        max(metrics["acc_seen"] + metrics["acc_unseen"], 1e-12))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "nope"], "--dataset"),
        (["--model", "nope", "--epochs", "1"], "--model"),
        (["--lr", "-1"], "--lr"),
        (["--variant", "bogus"], "--variant"),
        (["--num-attributes", "100000", "--epochs", "1"], "--num-attributes"),
    ],
)
def test_cli_bad_input_exit_2_one_line(args, needle):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_bf16_autocast_trains_close_to_fp32(tiny_synthetic):
    fp32 = fit(TrainConfig(epochs=2, seed=1), tiny_synthetic)
    bf16 = fit(TrainConfig(epochs=2, seed=1, amp="bf16"), tiny_synthetic)
    assert math.isfinite(bf16.metrics["loss"])
    assert abs(bf16.metrics["loss"] - fp32.metrics["loss"]) < 0.05 * fp32.metrics["loss"]
    with pytest.raises(ConfigError, match="--amp"):
        TrainConfig(amp="fp8").validate()


def test_resident_features_train_exactly_as_the_cache_loader():
    """--resident on (the fit images held on the device, gathered by index) changes no number."""
    from dataclasses import replace

    from harness.config import TrainConfig

    base = TrainConfig(dataset="synthetic", stage="search", epochs=2, num_threads=1)
    plain, held = fit(replace(base, resident="off")), fit(replace(base, resident="on"))
    assert plain.metrics == held.metrics
    assert plain.history == held.history
