"""Figures logged to MLflow: attention maps, the seen-unseen curve, validation H against the
searched hyperparameters. Matplotlib with the Agg backend (no display on cluster nodes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def attention_maps(
    attention: np.ndarray,
    grid: int,
    titles: Sequence[str],
    attribute_names: Sequence[Sequence[str]],
    true_cells: np.ndarray | None,
    path: str | Path,
) -> Path:
    """A grid of attention maps: one row per image, one column per attribute.

    attention: [I, K, R] (R = grid * grid) for I images and K attributes each (attribute_names
    [I][K] names them, per image); true_cells: [I, K]
    region index of the attribute's part in the image (-1 when hidden), drawn as a cross and
    a box, or None when the dataset does not record part positions.
    """
    plt = _pyplot()
    images, attrs = attention.shape[:2]
    fig, axes = plt.subplots(images, attrs, figsize=(2.2 * attrs, 2.3 * images), squeeze=False)
    for i in range(images):
        for k in range(attrs):
            ax = axes[i][k]
            ax.imshow(attention[i, k].reshape(grid, grid), cmap="viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if true_cells is not None and true_cells[i, k] >= 0:
                row, col = divmod(int(true_cells[i, k]), grid)
                ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
                ax.plot([col], [row], marker="x", color="red", markersize=8)
            name = attribute_names[i][k] if k < len(attribute_names[i]) else ""
            ax.set_title(f"{titles[i]}\n{name}" if k == 0 else name, fontsize=7)
    fig.suptitle("DAZLE attention alpha (red: true part position)" if true_cells is not None
                 else "DAZLE attention alpha", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def seen_unseen_curve(acc_seen: np.ndarray, acc_unseen: np.ndarray, ausuc: float, path: str | Path,
                      point: tuple[float, float] | None = None, title: str = "") -> Path:
    """acc_s against acc_u as the seen-score shift sweeps; `point` marks the model's own GZSL result."""
    plt = _pyplot()
    order = np.argsort(acc_unseen, kind="stable")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(np.asarray(acc_unseen)[order], np.asarray(acc_seen)[order], lw=2, label=f"AUSUC {ausuc:.3f}")
    if point is not None:
        ax.plot([point[1]], [point[0]], "o", color="red", label=f"GZSL (u {point[1]:.3f}, s {point[0]:.3f})")
    ax.set_xlabel("accuracy on unseen classes")
    ax.set_ylabel("accuracy on seen classes")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "seen-unseen accuracy curve", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def metric_against_param(values: Sequence[float], metric: Sequence[float], path: str | Path, param: str,
                         log_x: bool = False, highlight: Sequence[bool] | None = None,
                         stopped: Sequence[bool] | None = None, metric_name: str = "validation H") -> Path:
    """Scatter of a metric over all trials against one hyperparameter (paper point highlighted)."""
    plt = _pyplot()
    x = np.asarray(values, dtype=float)
    y = np.asarray(metric, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    hi = np.asarray(highlight if highlight is not None else [False] * len(x), dtype=bool)
    st = np.asarray(stopped if stopped is not None else [False] * len(x), dtype=bool)
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    full = keep & ~st & ~hi
    ax.scatter(x[full], y[full], s=22, label="full-length trials")
    if (keep & st & ~hi).any():
        ax.scatter(x[keep & st & ~hi], y[keep & st & ~hi], s=22, marker="v", alpha=0.6, label="stopped early (ASHA)")
    if (keep & hi).any():
        ax.scatter(x[keep & hi], y[keep & hi], s=80, marker="*", color="red", label="paper configuration")
    if log_x and keep.any() and (x[keep] > 0).all():
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide within a decade
    ax.set_xlabel(param)
    ax.set_ylabel(metric_name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{metric_name} against {param} over all trials", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pick_attributes(shown: np.ndarray | None, count: int) -> list[int]:
    """Up to `count` attribute columns to draw for one image: those it shows first."""
    if shown is None:
        return list(range(count))
    present = list(np.flatnonzero(shown))
    rest = [k for k in range(len(shown)) if k not in set(present)]
    return (present + rest)[:count]


def finite(values: Sequence[float]) -> bool:
    return any(math.isfinite(float(v)) for v in values)
