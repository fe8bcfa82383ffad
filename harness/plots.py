"""Every figure the harness draws: attention maps, the seen-unseen curve, validation H against the
searched hyperparameters, and the paper's Figure 4 panels.

Matplotlib's object API (a `Figure` per plot, no pyplot state, no display needed on cluster nodes):
figures drawn in Ray workers or threads never share global state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def _save(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


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
    images, attrs = attention.shape[:2]
    fig = Figure(figsize=(2.2 * attrs, 2.3 * images))
    axes = fig.subplots(images, attrs, squeeze=False)
    for i in range(images):
        for k in range(attrs):
            ax = axes[i][k]
            ax.imshow(attention[i, k].reshape(grid, grid), cmap="viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if true_cells is not None and true_cells[i, k] >= 0:
                row, col = divmod(int(true_cells[i, k]), grid)
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
                ax.plot([col], [row], marker="x", color="red", markersize=8)
            name = attribute_names[i][k] if k < len(attribute_names[i]) else ""
            ax.set_title(f"{titles[i]}\n{name}" if k == 0 else name, fontsize=7)
    fig.suptitle("DAZLE attention alpha (red: true part position)" if true_cells is not None
                 else "DAZLE attention alpha", fontsize=9)
    return _save(fig, path)


def seen_unseen_curve(acc_seen: np.ndarray, acc_unseen: np.ndarray, ausuc: float, path: str | Path,
                      point: tuple[float, float] | None = None, title: str = "") -> Path:
    """acc_s against acc_u as the seen-score shift sweeps; `point` marks the model's own GZSL result."""
    order = np.argsort(acc_unseen, kind="stable")
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
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
    return _save(fig, path)


def metric_against_param(values: Sequence[float], metric: Sequence[float], path: str | Path, param: str,
                         log_x: bool = False, highlight: Sequence[bool] | None = None,
                         stopped: Sequence[bool] | None = None, metric_name: str = "validation H") -> Path:
    """Scatter of a metric over all trials against one hyperparameter (paper point highlighted)."""
    x = np.asarray(values, dtype=float)
    y = np.asarray(metric, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    hi = np.asarray(highlight if highlight is not None else [False] * len(x), dtype=bool)
    st = np.asarray(stopped if stopped is not None else [False] * len(x), dtype=bool)
    fig = Figure(figsize=(4.5, 3.6))
    ax = fig.subplots()
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
    return _save(fig, path)


def pick_attributes(shown: np.ndarray | None, count: int) -> list[int]:
    """Up to `count` attribute columns to draw for one image: those it shows first."""
    if shown is None:
        return list(range(count))
    present = list(np.flatnonzero(shown))
    rest = [k for k in range(len(shown)) if k not in set(present)]
    return (present + rest)[:count]


def finite(values: Sequence[float]) -> bool:
    return any(math.isfinite(float(v)) for v in values)


# ---------------------------------------------------------------- Figure 4 (mean +- std over seeds)


@dataclass(frozen=True)
class Series:
    label: str
    x: Sequence[float]
    mean: Sequence[float]
    std: Sequence[float]
    dashed: bool = False


def _draw(ax, series: Sequence[Series], positions: Mapping[float, float] | None = None) -> None:
    for s in series:
        xs = [positions[x] for x in s.x] if positions else list(s.x)
        line = ax.plot(xs, s.mean, marker="o", markersize=4, linestyle="--" if s.dashed else "-", label=s.label)[0]
        low = [m - d for m, d in zip(s.mean, s.std, strict=True)]
        high = [m + d for m, d in zip(s.mean, s.std, strict=True)]
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def plot_attributes(series: Sequence[Series], path: str | Path, title: str,
                    xlabel: str = "number of attributes (lowest entropy first)") -> Path:
    """H (percent) against k, the number (or share) of lowest-entropy attributes kept."""
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    _draw(ax, series)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("H (%)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi=120)


def plot_lambda(series: Sequence[Series], path: str | Path, title: str) -> Path:
    """acc_s, acc_u, H (percent) against lambda; lambdas sit at even spacing so 0 can be shown."""
    grid = sorted({x for s in series for x in s.x})
    positions = {x: float(i) for i, x in enumerate(grid)}
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    _draw(ax, series, positions)
    ax.set_xticks([positions[x] for x in grid], [f"{x:g}" for x in grid])
    ax.set_xlabel("lambda (self-calibration weight)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi=120)


def plot_over_training(series: Sequence[Series], path: str | Path, title: str, sealed: float | None = None) -> Path:
    """Metrics (percent) against training epochs; `sealed` marks the last step's value (the reported one)."""
    fig = Figure(figsize=(5.6, 3.8))
    ax = fig.subplots()
    for s in series:
        line = ax.plot(list(s.x), s.mean, marker="o", markersize=3, label=s.label)[0]
        low = [m - d for m, d in zip(s.mean, s.std, strict=True)]
        high = [m + d for m, d in zip(s.mean, s.std, strict=True)]
        ax.fill_between(list(s.x), low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    if sealed is not None and series:
        ax.plot([max(series[0].x)], [sealed], marker="*", markersize=12, color="black", linestyle="none",
                label=f"sealed: last step, H {sealed:.1f}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test H (%)")
    ax.set_title(title, fontsize=8)
    return _save(fig, path, dpi=120)
