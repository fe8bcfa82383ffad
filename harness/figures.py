"""The plots of the paper's Figure 4, drawn headless (matplotlib's object API, no pyplot state).

Left panel: H against the number of entropy-ranked attributes, with and without attention over
attributes. Right panel: acc_s, acc_u and H against lambda. Each series is a mean over seeds
with a +- std band; tuned-setting series, when given, are dashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure


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


def plot_attributes(series: Sequence[Series], path: str | Path, title: str) -> Path:
    """H (percent) against k, the number of lowest-entropy attributes kept."""
    fig = Figure(figsize=(5.0, 3.6), dpi=120)
    ax = fig.subplots()
    _draw(ax, series)
    ax.set_xlabel("number of attributes (lowest entropy first)")
    ax.set_ylabel("H (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_lambda(series: Sequence[Series], path: str | Path, title: str) -> Path:
    """acc_s, acc_u, H (percent) against lambda; lambdas sit at even spacing so 0 can be shown."""
    grid = sorted({x for s in series for x in s.x})
    positions = {x: float(i) for i, x in enumerate(grid)}
    fig = Figure(figsize=(5.0, 3.6), dpi=120)
    ax = fig.subplots()
    _draw(ax, series, positions)
    ax.set_xticks([positions[x] for x in grid], [f"{x:g}" for x in grid])
    ax.set_xlabel("lambda (self-calibration weight)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
