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


def parallel_coordinates(columns: Mapping[str, Sequence[float]], log_axes: Sequence[str], color: Sequence[float],
                         path: str | Path, dashed: Sequence[bool] | None = None, color_name: str = "validation H",
                         title: str = "") -> Path:
    """One line per trial across the searched parameters (one axis each, scaled to its range, log where
    searched on a log scale), coloured by `color`; `dashed` marks trials stopped early."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    names = list(columns)
    raw = np.asarray([np.asarray(columns[n], dtype=float) for n in names])  # [P, T]
    scaled = np.empty_like(raw)
    ranges = []
    for i, name in enumerate(names):
        v = np.log10(raw[i]) if name in log_axes else raw[i]
        lo, hi = np.nanmin(v), np.nanmax(v)
        scaled[i] = (v - lo) / (hi - lo) if hi > lo else 0.5
        ranges.append((raw[i][np.nanargmin(v)], raw[i][np.nanargmax(v)]))
    c = np.asarray(color, dtype=float)
    norm = Normalize(np.nanmin(c) if np.isfinite(c).any() else 0, np.nanmax(c) if np.isfinite(c).any() else 1)
    cmap = colormaps["viridis"]
    st = np.asarray(dashed if dashed is not None else [False] * raw.shape[1], dtype=bool)
    fig = Figure(figsize=(1.6 * len(names) + 2.2, 3.8))
    ax = fig.subplots()
    x = np.arange(len(names))
    for t in np.argsort(np.nan_to_num(c, nan=-np.inf)):  # best drawn last, on top
        ok = np.isfinite(c[t])
        ax.plot(x, scaled[:, t], color=cmap(norm(c[t])) if ok else "lightgrey", linewidth=1.0 if st[t] else 1.8,
                linestyle="--" if st[t] else "-", alpha=0.6 if st[t] else 0.9)
    for i, (lo, hi) in enumerate(ranges):
        ax.axvline(i, color="black", linewidth=0.6)
        ax.annotate(f"{lo:.3g}", (i, 0), xytext=(3, -12), textcoords="offset points", fontsize=7)
        ax.annotate(f"{hi:.3g}", (i, 1), xytext=(3, 4), textcoords="offset points", fontsize=7)
    ax.set_xticks(x, [f"{n}\n(log)" if n in log_axes else n for n in names])
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.set_xlim(-0.2, len(names) - 0.6)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=color_name)
    ax.set_title(title or f"trials by {color_name} (dashed: stopped early)", fontsize=9)
    return _save(fig, path)


def seen_unseen_pareto(acc_seen: Sequence[float], acc_unseen: Sequence[float], front: Sequence[int], path: str | Path,
                       stopped: Sequence[bool] | None = None, highlight: Sequence[bool] | None = None,
                       best: int | None = None, title: str = "") -> Path:
    """Validation acc_s against acc_u of every trial, the Pareto front joined, H contours behind."""
    s, u = np.asarray(acc_seen, dtype=float), np.asarray(acc_unseen, dtype=float)
    st = np.asarray(stopped if stopped is not None else [False] * len(s), dtype=bool)
    hi = np.asarray(highlight if highlight is not None else [False] * len(s), dtype=bool)
    fig = Figure(figsize=(4.8, 4.0))
    ax = fig.subplots()
    grid = np.linspace(0.001, 1, 200)
    gs, gu = np.meshgrid(grid, grid)
    contours = ax.contour(gs, gu, 2 * gs * gu / (gs + gu), levels=[0.2, 0.4, 0.6, 0.8], colors="lightgrey",
                          linewidths=0.8)
    ax.clabel(contours, fmt="H=%.1f", fontsize=6)
    ax.scatter(s[~st], u[~st], s=22, label="full-length trials")
    if st.any():
        ax.scatter(s[st], u[st], s=22, marker="v", alpha=0.6, label="stopped early (at its last rung)")
    if front:
        f = list(front)
        ax.plot(s[f], u[f], color="black", linewidth=1, marker="o", markerfacecolor="none", markersize=9,
                label="Pareto front")
    if hi.any():
        ax.scatter(s[hi], u[hi], s=90, marker="*", color="red", label="paper configuration")
    if best is not None:
        ax.scatter([s[best]], [u[best]], s=140, facecolors="none", edgecolors="orange", linewidths=2,
                   label="chosen (best H)")
    ax.set_xlabel("validation acc_s (seen)")
    ax.set_ylabel("validation acc_u (unseen)")
    top = max(1e-3, np.nanmax(np.concatenate([s, u])) if len(s) else 1.0)
    ax.set_xlim(0, min(1.0, top * 1.1 + 0.02))
    ax.set_ylim(0, min(1.0, top * 1.1 + 0.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title or "validation acc_s vs acc_u of the trials", fontsize=9)
    return _save(fig, path)
