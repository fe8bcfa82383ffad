"""The figures a search logs: written as PNG files, with the truth drawn where it is known."""

from __future__ import annotations

import numpy as np
from PIL import Image

from harness import plots


def _png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_attention_maps_mark_the_true_part_cell(tmp_path):
    attention = np.zeros((2, 3, 49), dtype=np.float32)
    attention[:, :, 10] = 1.0
    cells = np.array([[10, 20, -1], [0, 48, 5]])
    names = [["a", "b", "c"], ["d", "e", "f"]]
    marked = _png(plots.attention_maps(attention, 7, ["img 1", "img 2"], names, cells, tmp_path / "with.png"))
    plain = _png(plots.attention_maps(attention, 7, ["img 1", "img 2"], names, None, tmp_path / "without.png"))
    red = lambda rgb: ((rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum()  # noqa: E731
    assert red(marked) > 50 and red(plain) == 0


def test_curve_and_parameter_scatter_tolerate_missing_values(tmp_path):
    acc_u = np.linspace(0, 0.8, 20)
    path = plots.seen_unseen_curve(0.8 - acc_u, acc_u, 0.3, tmp_path / "curve.png", point=(0.4, 0.4))
    assert _png(path).shape[0] > 100
    path = plots.metric_against_param([0.01, 0.1, float("nan"), 1.0], [0.2, 0.3, 0.5, float("nan")],
                                      tmp_path / "lam.png", "lambda", log_x=True,
                                      highlight=[False, True, False, False], stopped=[True, False, False, False])
    assert _png(path).shape[1] > 100
