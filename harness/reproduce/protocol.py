"""DIAGNOSTIC ONLY: the cost of selecting on test, measured (`python -m harness.reproduce protocol`).

This is the one module of the harness that looks at the test split more than once. It exists to
measure what the habit of most public GZSL code, the DAZLE authors' notebooks included, is worth:
evaluate on test during training and keep the evaluation with the best test H, sometimes also
sweeping the seen-score shift on test. Nothing may import it except the reproduce CLI; a test
walks the import graph from harness.search, harness.train, harness.trainer and the final stage.

Per seed, one DAZLE fit on trainval with the paper's settings (harness.trainer.fit, unchanged: its
optional `on_step` callback only lets this module evaluate between steps) and four readings:
  (a) sealed: the fixed last step, fit's own final-stage metrics, what `harness.train` reports;
  (b) the authors' rule: the evaluation with the best test H;
  (c) (b) plus calibrated stacking on test: the best test H over every evaluation and every
      seen-score shift (the iterate and the shift both chosen on test);
  (d) with --tuned: the configuration a finished search chose on validation, evaluated once.
The authors evaluate once per epoch on CUB / SUN / AWA2 and every 200 iterations on DeepFashion;
on a stand-in the number of evaluations is scaled to match. The last step is always evaluated, so
(b) >= (a) by construction and the inflation measures the selection only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from harness.config import TrainConfig
from harness.data.registry import ENTRIES
from harness.reproduce.runner import Outcome, Trial
from harness.reproduce.tables import Stat

# The authors' notebooks: CUB / SUN / AWA2 evaluate on test once per epoch; DeepFashion every
# 200 iterations of its 2 epochs of ceil(204,885 / 50) = 4,098 iterations: 40 evaluations.
EVERY_EPOCH = ("cub", "cub-ss", "sun", "awa2")
DEEPFASHION_INTERVAL = 200
DEEPFASHION_EVALUATIONS = (2 * math.ceil(204_885 / 50)) // DEEPFASHION_INTERVAL
RULES = ("sealed", "authors", "authors-shift", "tuned")
RULE_TEXT = {
    "sealed": ("(a) sealed: the fixed last step (= harness.train)", "nothing", "1"),
    "authors": ("(b) authors' rule: best test H over training", "the iterate", "{n}"),
    "authors-shift": ("(c) (b) + seen-score shift swept on test", "the iterate and the shift", "{n} x shifts"),
    "tuned": ("(d) tuned on validation (--tuned), evaluated once", "nothing (validation chose)", "1"),
}
METRICS = ("acc_s", "acc_u", "H")


def real_dataset_of(dataset: str) -> str | None:
    """The paper dataset `dataset` is (or stands in for); None for a stand-in of none."""
    if dataset in EVERY_EPOCH or dataset == "deepfashion":
        return dataset
    return next((name for name, entry in sorted(ENTRIES.items()) if entry.stand_in == dataset), None)


def evaluation_steps(dataset: str, steps_per_epoch: int, epochs: int) -> list[int]:
    """The steps (1-based, over all epochs) after which the authors' schedule evaluates on test."""
    total = steps_per_epoch * epochs
    real = real_dataset_of(dataset)
    if real == "deepfashion" and dataset == "deepfashion":
        steps = list(range(DEEPFASHION_INTERVAL, total + 1, DEEPFASHION_INTERVAL))
    elif real == "deepfashion":  # a stand-in: as many evaluations as on DeepFashion, evenly spaced
        count = min(DEEPFASHION_EVALUATIONS, total)
        steps = [int(round(total * (i + 1) / count)) for i in range(count)]
    else:  # CUB / SUN / AWA2, their stand-ins and any other dataset: once per epoch
        steps = [steps_per_epoch * (e + 1) for e in range(epochs)]
    return sorted(set(steps) | {total})


def _best_on_curve(curve) -> tuple[float, float, float, float]:
    """(acc_s, acc_u, H, shift) at the seen-score shift with the best H on this curve."""
    s, u = np.asarray(curve.acc_seen), np.asarray(curve.acc_unseen)
    h = np.where(s + u > 0, 2 * s * u / np.maximum(s + u, 1e-12), 0.0)
    k = int(np.argmax(h))
    return float(s[k]), float(u[k]), float(h[k]), float(curve.shifts[k])


def _margin_shift(method, view) -> float:
    """The seen-score shift the model's calibration margin amounts to (DAZLE: 2; none: 0)."""
    margin = method.prediction_margin()
    if margin is None:
        return 0.0
    margin = margin.detach().cpu().numpy()
    return float(margin[view.unseen_classes].mean() - margin[view.seen_classes].mean())


def protocol_task(config_values: dict) -> dict:
    """Body of one Ray task: fit with a test evaluation at the authors' interval, return plain data.

    `metrics` are fit's own final-stage metrics (the sealed reading); `curve` holds one record per
    evaluation; `extra` the schedule and the check that the last evaluation equals `metrics`.
    """
    from harness.data.sampling import ClassBalancedSampler
    from harness.data.splits import make_view
    from harness.trainer import evaluate, fit, resolve_dataset

    config = TrainConfig(**config_values)
    try:
        dataset = resolve_dataset(config)
        view = make_view(dataset, "final")
        steps_per_epoch = ClassBalancedSampler(view.fit_labels, config.batch_size, config.seed).steps_per_epoch()
        epochs = config.epochs or dataset.default_epochs
        schedule = set(evaluation_steps(config.dataset, steps_per_epoch, epochs))
        curve: list[dict[str, float]] = []

        def look_at_test(method, step: int) -> None:
            if step not in schedule:
                return
            metrics, seen_unseen, _ = evaluate(method, view, config)
            s, u, h, shift = _best_on_curve(seen_unseen)
            if metrics.H >= h:  # the model's own margin is one of the shifts: (c) never reads below (b)
                s, u, h, shift = metrics.acc_seen, metrics.acc_unseen, metrics.H, _margin_shift(method, view)
            curve.append({"step": step, "epoch": step / steps_per_epoch, "diagnostic_test_acc_seen": metrics.acc_seen,
                          "diagnostic_test_acc_unseen": metrics.acc_unseen, "diagnostic_test_H": metrics.H,
                          "diagnostic_swept_acc_seen": s, "diagnostic_swept_acc_unseen": u,
                          "diagnostic_swept_H": h, "diagnostic_swept_shift": shift})

        result = fit(config, dataset, on_step=look_at_test)
    except Exception as err:  # reported in its row, the other seeds go on
        return {"error": " ".join(f"{type(err).__name__}: {err}".split())}
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    last = curve[-1]
    same = all(last[f"diagnostic_test_{k}"] == metrics[f"test_{k}"] for k in ("acc_seen", "acc_unseen", "H"))
    return {"metrics": metrics, "history": result.history, "seconds": result.seconds, "curve": curve,
            "extra": {"steps_per_epoch": steps_per_epoch, "total_steps": steps_per_epoch * epochs,
                      "evaluations": len(curve),
                      "last_evaluation_equals_sealed": same}}


# ---------------------------------------------------------------- the readings and the table


@dataclass
class Readings:
    """Per rule, per metric: seed -> value in percent."""

    values: dict[str, dict[str, dict[int, float]]]
    evaluations: int
    checks: dict[int, bool]  # seed -> the last evaluation equals the sealed metrics
    errors: list[str]

    def stat(self, rule: str, metric: str) -> Stat:
        return Stat(dict(self.values.get(rule, {}).get(metric, {})))

    def inflation(self, rule: str, metric: str = "H") -> Stat:
        """rule - sealed, paired by seed, in points."""
        a, b = self.values["sealed"][metric], self.values.get(rule, {}).get(metric, {})
        return Stat({s: b[s] - a[s] for s in a if s in b})


def read_outcomes(base: TrainConfig, seeds: int, outcomes: dict[TrainConfig, Outcome],
                  tuned: TrainConfig | None, tuned_outcomes: dict[TrainConfig, Outcome]) -> Readings:
    values: dict[str, dict[str, dict[int, float]]] = {r: {m: {} for m in METRICS} for r in RULES}
    checks, errors, evaluations = {}, [], 0
    for seed in range(seeds):
        outcome = outcomes.get(replace(base, seed=seed))
        if outcome is None or not outcome.ok:
            errors.append(f"seed {seed}: {outcome.error if outcome else 'not run'}")
            continue
        m, curve = outcome.metrics, outcome.curve
        evaluations = len(curve)
        checks[seed] = bool(outcome.extra.get("last_evaluation_equals_sealed"))
        best = max(curve, key=lambda r: r["diagnostic_test_H"])  # the first of ties, as argmax
        swept = max(curve, key=lambda r: r["diagnostic_swept_H"])
        rows = {"sealed": (m["test_acc_seen"], m["test_acc_unseen"], m["test_H"]),
                "authors": (best["diagnostic_test_acc_seen"], best["diagnostic_test_acc_unseen"],
                            best["diagnostic_test_H"]),
                "authors-shift": (swept["diagnostic_swept_acc_seen"], swept["diagnostic_swept_acc_unseen"],
                                  swept["diagnostic_swept_H"])}
        for rule, triple in rows.items():
            for metric, v in zip(METRICS, triple, strict=True):
                values[rule][metric][seed] = 100.0 * v
    if tuned is not None:
        for seed in range(seeds):
            outcome = tuned_outcomes.get(replace(tuned, seed=seed))
            if outcome is None or not outcome.ok:
                errors.append(f"tuned seed {seed}: {outcome.error if outcome else 'not run'}")
                continue
            for metric, key in zip(METRICS, ("test_acc_seen", "test_acc_unseen", "test_H"), strict=True):
                values["tuned"][metric][seed] = 100.0 * outcome.metrics[key]
    return Readings(values, evaluations, checks, errors)


def _cell(stat: Stat) -> str:
    if stat.n == 0:
        return "failed"
    return f"{stat.mean:.1f} ± {stat.std:.1f}" if stat.n > 1 else f"{stat.mean:.1f}"


def _inflation_cell(stat: Stat) -> str:
    if stat.n == 0:
        return "-"
    lo, hi = min(stat.values.values()), max(stat.values.values())
    spread = f" ± {stat.std:.1f} [{lo:+.1f}, {hi:+.1f}]" if stat.n > 1 else ""
    return f"{stat.mean:+.1f}{spread}"


def render_markdown(readings: Readings, dataset: str, seeds: int, schedule_text: str, epochs: int | None = None
                    ) -> str:
    settings = "paper settings" if epochs is None else f"paper settings but {epochs} epochs"
    lines = [f"### The cost of selecting on test: DAZLE on {dataset} ({seeds} seed(s), {settings})", "",
             "| reading | selected on test | test evaluations | acc_s | acc_u | H | H - sealed (paired) |",
             "|---|---|---|---|---|---|---|"]
    for rule in RULES:
        if not readings.values[rule]["H"] and rule == "tuned":
            continue
        label, selected, count = RULE_TEXT[rule]
        inflation = "-" if rule == "sealed" else _inflation_cell(readings.inflation(rule))
        cells = [_cell(readings.stat(rule, m)) for m in METRICS]
        lines.append(f"| {label} | {selected} | {count.format(n=readings.evaluations)} | " + " | ".join(cells)
                     + f" | {inflation} |")
    ok = sum(readings.checks.values())
    lines += ["", "Numbers in percent, mean ± std over seeds; H - sealed: the per-seed paired difference in points, "
              "mean ± std [min, max].",
              f"Evaluations on test: {schedule_text}. The last step is always among them, so (b) >= (a).",
              f"(a) is fit's own final-stage result; the last in-training evaluation equals it on {ok}/"
              f"{len(readings.checks)} seeds.",
              "(b) and (c) look at test many times: they are not results, they measure what selecting on "
              "test adds (the DAZLE notebooks report (b))."]
    lines += [f"failed: {e}" for e in readings.errors]
    return "\n".join(lines) + "\n"


def records(readings: Readings) -> list[dict[str, object]]:
    out = []
    for rule in RULES:
        rec: dict[str, object] = {"reading": rule}
        for m in METRICS:
            stat = readings.stat(rule, m)
            rec[f"{m}_mean"] = round(stat.mean, 4) if stat.n else None
            rec[f"{m}_std"] = round(stat.std, 4) if stat.n else None
            rec[f"{m}_n"] = stat.n
        inflation = readings.inflation(rule) if rule != "sealed" else Stat({})
        rec["H_inflation_mean"] = round(inflation.mean, 4) if inflation.n else None
        rec["H_inflation_std"] = round(inflation.std, 4) if inflation.n else None
        rec["H_inflation_per_seed"] = {str(k): round(v, 4) for k, v in inflation.values.items()}
        out.append(rec)
    return out


def schedule_text(dataset: str, outcomes: dict[TrainConfig, Outcome]) -> str:
    real = real_dataset_of(dataset)
    first = next((o for o in outcomes.values() if o.ok and o.curve), None)
    n = len(first.curve) if first else 0
    steps = first.extra.get("total_steps", 0) if first else 0
    if real == "deepfashion" and dataset == "deepfashion":
        rule = f"every {DEEPFASHION_INTERVAL} iterations (the authors' DeepFashion notebook)"
    elif real == "deepfashion":
        rule = (f"{DEEPFASHION_EVALUATIONS} evenly spaced, as many as the authors' every-{DEEPFASHION_INTERVAL}-"
                f"iterations schedule makes on DeepFashion")
    else:
        rule = "once per epoch (the authors' CUB / SUN / AWA2 notebooks)"
    return f"{rule}: {n} over {steps} steps"


def draw(outcomes: dict[TrainConfig, Outcome], base: TrainConfig, seeds: int, folder: Path, dataset: str) -> Path:
    """Test H over training (mean ± std over seeds), at the model's margin and with the shift swept."""
    from harness.plots import Series, plot_over_training

    runs = [o for s in range(seeds) if (o := outcomes.get(replace(base, seed=s))) is not None and o.ok and o.curve]
    series = []
    if runs:
        x = [r["epoch"] for r in runs[0].curve]
        for key, label in (("diagnostic_test_H", "test H (what (b) picks from)"),
                           ("diagnostic_swept_H", "test H, seen-score shift swept on test ((c))")):
            table = np.array([[100.0 * r[key] for r in o.curve] for o in runs])  # [seeds, evaluations]
            std = table.std(0, ddof=1) if len(runs) > 1 else np.zeros(table.shape[1])
            series.append(Series(label, x, table.mean(0).tolist(), std.tolist()))
    sealed = [100.0 * o.metrics["test_H"] for o in runs]
    return plot_over_training(series, folder / "protocol_test_h.png",
                              f"Test H during training, DAZLE on {dataset}, {len(runs)} seed(s), mean ± std",
                              sealed=float(np.mean(sealed)) if sealed else None)


def trials(base: TrainConfig, seeds: int, setting: str = "paper") -> list[Trial]:
    return [Trial("protocol", "dazle", setting, replace(base, seed=s)) for s in range(seeds)]

