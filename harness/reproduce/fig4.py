"""Figure 4 of the paper as two sweeps of fits, plotted by harness.plots.

Left: H against k, the number of lowest-entropy attributes kept (TrainConfig.num_attributes),
with and without attention over attributes, everything else at the paper's settings.
Right: acc_s, acc_u and H against lambda, with all attributes.
The grids are ours (the paper's exact tick values are not in our sources); both are options.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import TrainConfig
from harness.errors import InputError
from harness.reproduce.runner import Outcome, Trial
from harness.reproduce.tables import METRIC_KEYS, Stat

if TYPE_CHECKING:
    from harness.plots import Series

DEFAULT_K_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)
DEFAULT_LAMBDAS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
METRICS = ("acc_s", "acc_u", "H")
AA_LABELS = {True: "with attention over attributes", False: "without attention over attributes"}


def default_k_grid(num_attributes: int) -> list[int]:
    return sorted({max(1, round(num_attributes * f)) for f in DEFAULT_K_FRACTIONS})


def parse_grid(text: str | None, option: str, kind: type) -> list | None:
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise InputError(f"{option} {text}: expected comma-separated {kind.__name__} values") from err
    if not values:
        raise InputError(f"{option} {text!r}: no value given")
    return sorted(set(values))


@dataclass(frozen=True)
class Point:
    sweep: str  # "attributes" or "lambda"
    variant: str  # series label within the sweep
    x: float
    setting: str
    config: TrainConfig

    @property
    def row(self) -> str:
        return f"{self.sweep}:{self.variant}:{self.x:g}"


@dataclass
class Fig4Spec:
    dataset: str
    num_attributes: int
    k_grid: list[int]
    lambdas: list[float]
    base: TrainConfig
    tuned: TrainConfig | None

    def __post_init__(self) -> None:
        bad = [k for k in self.k_grid if not 1 <= k <= self.num_attributes]
        if bad:
            raise InputError(f"--k-grid: {bad} outside 1..{self.num_attributes} (the attributes of {self.dataset})")
        if any(lam < 0 or not math.isfinite(lam) for lam in self.lambdas):
            raise InputError(f"--lambda-grid: {self.lambdas} must be finite and >= 0")

    @property
    def settings(self) -> tuple[str, ...]:
        return ("paper", "tuned") if self.tuned is not None else ("paper",)

    def points(self) -> list[Point]:
        out = []
        for setting in self.settings:
            base = self.base if setting == "paper" else self.tuned
            for aa in (True, False):
                for k in self.k_grid:
                    k_value = None if k == self.num_attributes else k
                    out.append(Point("attributes", AA_LABELS[aa], k, setting,
                                     replace(base, num_attributes=k_value, attribute_attention=aa)))
            for lam in self.lambdas:
                out.append(Point("lambda", "all attributes", lam, setting,
                                 replace(base, lam=lam, num_attributes=None)))
        return out

    def trials(self, seeds: int) -> list[Trial]:
        return [Trial("fig4", p.row, p.setting, replace(p.config, seed=s)) for p in self.points() for s in range(seeds)]


def collect(spec: Fig4Spec, outcomes: dict[TrainConfig, Outcome], seeds: int) -> list[dict]:
    """One record per point: mean/std/n of each metric in percent, and failures."""
    records = []
    for p in spec.points():
        stats = {m: Stat({}) for m in METRICS}
        errors = []
        for s in range(seeds):
            outcome = outcomes.get(replace(p.config, seed=s))
            if outcome is None:
                continue
            if not outcome.ok:
                errors.append(outcome.error or "failed")
                continue
            for m in METRICS:
                value = outcome.metrics.get(METRIC_KEYS[m])
                if value is not None and math.isfinite(value):
                    stats[m].values[s] = 100.0 * value
        rec = {"sweep": p.sweep, "series": p.variant, "setting": p.setting, "x": p.x}
        for m in METRICS:
            rec[f"{m}_mean"] = round(stats[m].mean, 4) if stats[m].n else None
            rec[f"{m}_std"] = round(stats[m].std, 4) if stats[m].n else None
            rec[f"{m}_n"] = stats[m].n
        rec["failures"] = len(errors)
        rec["error"] = errors[0] if errors else ""
        records.append(rec)
    return records


def _series(records: list[dict], sweep: str, label_of, metrics: tuple[str, ...]) -> list[Series]:
    from harness.plots import Series  # matplotlib only when drawing: --help stays light

    out = []
    keys = dict.fromkeys((r["series"], r["setting"]) for r in records if r["sweep"] == sweep)
    for series, setting in keys:
        pts = [r for r in records if r["sweep"] == sweep and r["series"] == series and r["setting"] == setting]
        pts.sort(key=lambda r: r["x"])
        for m in metrics:
            ok = [r for r in pts if r[f"{m}_mean"] is not None]
            if not ok:
                continue
            out.append(Series(label_of(series, setting, m), [r["x"] for r in ok], [r[f"{m}_mean"] for r in ok],
                              [r[f"{m}_std"] for r in ok], dashed=setting == "tuned"))
    return out


def draw(records: list[dict], folder: Path, dataset: str, seeds: int) -> list[Path]:
    from harness.plots import plot_attributes, plot_lambda

    suffix = f"{dataset}, {seeds} seed(s), mean ± std"
    left = _series(records, "attributes",
                   lambda s, setting, m: s + (" (tuned)" if setting == "tuned" else ""), ("H",))
    right = _series(records, "lambda",
                    lambda s, setting, m: m + (" (tuned)" if setting == "tuned" else ""), METRICS)
    return [
        plot_attributes(left, folder / "fig4_attributes.png", f"Figure 4 (left): H vs number of attributes, {suffix}"),
        plot_lambda(right, folder / "fig4_lambda.png", f"Figure 4 (right): accuracy vs lambda, {suffix}"),
    ]


def render_markdown(records: list[dict], dataset: str) -> str:
    lines = [f"### Figure 4 on {dataset}", "",
             "| sweep | series | setting | x | acc_s | acc_u | H |", "|---|---|---|---|---|---|---|"]
    for r in records:
        cells = []
        for m in METRICS:
            if r[f"{m}_mean"] is None:
                cells.append("failed")
            else:
                cells.append(f"{r[f'{m}_mean']:.1f} ± {r[f'{m}_std']:.1f}" if r[f"{m}_n"] > 1 else f"{r[f'{m}_mean']:.1f}")
        x = f"k={r['x']:g}" if r["sweep"] == "attributes" else f"lambda={r['x']:g}"
        lines.append(f"| {r['sweep']} | {r['series']} | {r['setting']} | {x} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Numbers in percent (mean ± std over seeds). The paper's Figure 4 values are not tabulated here: "
                 "its plotted numbers are not available as data.")
    return "\n".join(lines) + "\n"


def render_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["sweep"], lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()
