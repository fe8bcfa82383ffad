"""Figure 4 of the paper (DeepFashion) as two sweeps of fits, plotted by harness.plots.

Left: H against the share of attributes kept (the k lowest-entropy attributes,
TrainConfig.num_attributes), as fractions of A because the paper's 300 of DeepFashion's 1,000 are
30%: the stand-in's 336 attributes sweep the same fractions. Three series, as the paper draws
them: DAZLE, DAZLE without attention over attributes, and attention over attributes on mean
features (dense attention off). Right: acc_s, acc_u and H against lambda, with all attributes.
The paper prints no plotted values, only statements in its text; each is checked by a stated rule
(STATEMENTS). The grids are ours; both are options.
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

DEFAULT_K_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
PAPER_FRACTION = 0.3  # the paper's 300 of DeepFashion's 1,000 attributes
DEFAULT_LAMBDAS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
METRICS = ("acc_s", "acc_u", "H")
DAZLE = "DAZLE"
NO_AA = "without attention over attributes"
MEAN_AA = "attention over attributes on mean features"
# Series of the attribute sweep -> (dense attention, attention over attributes).
SERIES = {DAZLE: (True, True), NO_AA: (True, False), MEAN_AA: (False, True)}


def default_k_grid(num_attributes: int, fractions: tuple[float, ...] = DEFAULT_K_FRACTIONS) -> list[int]:
    return sorted({max(1, round(num_attributes * f)) for f in fractions})


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
    x: float  # percent of the attributes kept, or lambda
    setting: str
    config: TrainConfig

    @property
    def row(self) -> str:
        return f"{self.sweep}:{self.variant}:{self.x:.4g}"


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
            for label, (dense, aa) in SERIES.items():
                for k in self.k_grid:
                    k_value = None if k == self.num_attributes else k
                    out.append(Point("attributes", label, 100.0 * k / self.num_attributes, setting,
                                     replace(base, num_attributes=k_value, dense_attention=dense,
                                             attribute_attention=aa)))
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
        rec = {"sweep": p.sweep, "series": p.variant, "setting": p.setting, "x": round(p.x, 4),
               "k": p.config.num_attributes or spec.num_attributes if p.sweep == "attributes" else None}
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

    suffix = f"\n{dataset}, {seeds} seed(s), mean ± std"
    left = _series(records, "attributes",
                   lambda s, setting, m: s + (" (tuned)" if setting == "tuned" else ""), ("H",))
    right = _series(records, "lambda",
                    lambda s, setting, m: m + (" (tuned)" if setting == "tuned" else ""), METRICS)
    return [
        plot_attributes(left, folder / "fig4_attributes.png", f"Figure 4 (left): H vs attributes kept, {suffix}",
                        xlabel="attributes kept, % of A (lowest entropy first)"),
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
        x = f"{r['x']:.4g}% (k={r['k']})" if r["sweep"] == "attributes" else f"lambda={r['x']:g}"
        lines.append(f"| {r['sweep']} | {r['series']} | {r['setting']} | {x} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Numbers in percent (mean ± std over seeds). The paper prints no value of its Figure 4, only "
                 "statements in its text; they are checked below.")
    return "\n".join(lines) + "\n"


def render_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["sweep"], lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


# ---------------------------------------------------------------- the paper's statements about Figure 4


@dataclass(frozen=True)
class Statement:
    text: str  # what the paper says
    rule: str  # how we check it
    verdict: str  # "holds", "fails" or "n/a"
    detail: str  # the numbers the verdict rests on


def _means(records: list[dict], sweep: str, series: str, metric: str, setting: str) -> dict[float, float]:
    return {r["x"]: r[f"{metric}_mean"] for r in records if r["sweep"] == sweep and r["series"] == series
            and r["setting"] == setting and r[f"{metric}_mean"] is not None}


def _lambda_best(records: list[dict], setting: str) -> Statement:
    text, rule = "H is best for lambda in [0.1, 0.3]", "holds when the lambda with the highest mean H is in [0.1, 0.3]"
    h = _means(records, "lambda", "all attributes", "H", setting)
    if not h or not any(0.1 <= x <= 0.3 for x in h):
        return Statement(text, rule, "n/a", "the lambda grid has no point in [0.1, 0.3]")
    best = max(h, key=lambda x: h[x])
    return Statement(text, rule, "holds" if 0.1 <= best <= 0.3 else "fails", f"best H {h[best]:.1f} at lambda {best:g}")


def _lambda_acc_u(records: list[dict], setting: str) -> Statement:
    text = "acc_u is near 0 for very small lambda, rises, then saturates"
    rule = "holds when acc_u < 5% at the smallest lambda and the two largest lambdas' acc_u are within 2 points"
    u = _means(records, "lambda", "all attributes", "acc_u", setting)
    if len(u) < 3:
        return Statement(text, rule, "n/a", "fewer than three lambdas")
    xs = sorted(u)
    low, flat = u[xs[0]] < 5.0, abs(u[xs[-1]] - u[xs[-2]]) <= 2.0
    detail = (f"acc_u {u[xs[0]]:.1f} at lambda {xs[0]:g}; {u[xs[-2]]:.1f} and {u[xs[-1]]:.1f} at lambda "
              f"{xs[-2]:g} and {xs[-1]:g}")
    return Statement(text, rule, "holds" if low and flat else "fails", detail)


def _top_attributes(records: list[dict], setting: str) -> Statement:
    text = "the top 300 attributes (30%) give a high H"
    rule = "holds when DAZLE's H with the 30% lowest-entropy attributes is within 2 points of its best H over the sweep"
    h = _means(records, "attributes", DAZLE, "H", setting)
    near = [x for x in h if abs(x - 100 * PAPER_FRACTION) < 2.5]
    if not near:
        return Statement(text, rule, "n/a", "no point at 30% of the attributes in the sweep")
    x30 = min(near, key=lambda x: abs(x - 100 * PAPER_FRACTION))
    best = max(h, key=lambda x: h[x])
    gap = h[best] - h[x30]
    return Statement(text, rule, "holds" if gap <= 2.0 else "fails",
                     f"H {h[x30]:.1f} at {x30:.3g}%, best {h[best]:.1f} at {best:.3g}% ({gap:.1f} points below)")


def _mean_features(records: list[dict], setting: str) -> Statement:
    text = "attention over attributes on mean features is more than 3 points of H below DAZLE"
    rule = ("holds when DAZLE's best H over the sweep exceeds the mean-features series' best H by more than 3 "
            "points, and so does its H with all attributes")
    a, b = _means(records, "attributes", DAZLE, "H", setting), _means(records, "attributes", MEAN_AA, "H", setting)
    if not a or not b or 100.0 not in a or 100.0 not in b:
        return Statement(text, rule, "n/a", "no point with all attributes in both series")
    best_gap, all_gap = max(a.values()) - max(b.values()), a[100.0] - b[100.0]
    return Statement(text, rule, "holds" if best_gap > 3.0 and all_gap > 3.0 else "fails",
                     f"best H {max(a.values()):.1f} vs {max(b.values()):.1f} ({best_gap:+.1f} points); "
                     f"all attributes {a[100.0]:.1f} vs {b[100.0]:.1f} ({all_gap:+.1f})")


def _attribute_attention(records: list[dict], setting: str) -> Statement:
    text = "attention over attributes adds 1.3 points of H (DAZLE vs without it)"
    rule = "holds when DAZLE's H exceeds the series without attention over attributes at all attributes"
    a, b = _means(records, "attributes", DAZLE, "H", setting), _means(records, "attributes", NO_AA, "H", setting)
    if 100.0 not in a or 100.0 not in b:
        return Statement(text, rule, "n/a", "no point with all attributes")
    gap = a[100.0] - b[100.0]
    return Statement(text, rule, "holds" if gap > 0 else "fails", f"{gap:+.1f} points at all attributes")


STATEMENTS = (_lambda_best, _lambda_acc_u, _top_attributes, _mean_features, _attribute_attention)


def check_statements(records: list[dict], setting: str = "paper") -> list[Statement]:
    """Every statement of the paper's text about Figure 4, checked on the mean over seeds."""
    return [check(records, setting) for check in STATEMENTS]


def render_statements(statements: list[Statement], dataset: str, seeds: int) -> str:
    lines = [f"### The paper's statements about Figure 4, checked on {dataset} ({seeds} seed(s), means)", "",
             "| the paper says | rule | ours | verdict |", "|---|---|---|---|"]
    lines += [f"| {s.text} | {s.rule} | {s.detail} | {s.verdict} |" for s in statements]
    return "\n".join(lines) + "\n"
