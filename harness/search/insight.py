"""What a search teaches besides its winner: which hyperparameters mattered for validation H.

Importance is Optuna's PED-ANOVA (`optuna.importance.PedAnovaImportanceEvaluator`, no dependency
beyond Optuna): how much more likely each parameter's values are among the top trials than among
all of them. It is computed on the validation H every usable trial reached at one common report
(ASHA's first rung, where stopped trials were still running), so stopped trials count with the
value they were judged on rather than being dropped, and the spread is the standard deviation
over bootstrap resamples of the trials. Below MIN_TRIALS trials, or when every trial has the same
H there, it says so instead of giving numbers. Plain Python and Optuna: no Ray, no torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_TRIALS = 10  # PED-ANOVA compares the top trials with all: it wants at least 5 on top (Optuna's docs)
TOP_TRIALS = 5
RESAMPLES = 30
LABELS = {"lam": "lambda", "num_attributes": "k"}


def label(name: str) -> str:
    return LABELS.get(name, name)


def common_pass(histories: Sequence[dict[int, float]]) -> int | None:
    """The latest report (pass) every trial reached: ASHA's first rung, or the last pass without ASHA."""
    common = None
    for history in histories:
        passes = {p for p, v in history.items() if isinstance(v, int | float) and math.isfinite(v)}
        common = passes if common is None else common & passes
    return max(common) if common else None


def _importances(points: Sequence[tuple[dict[str, Any], float]], distributions: dict) -> dict[str, float]:
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(params=p, distributions=distributions, value=v) for p, v in points])
    # Optuna's default top 10% is 2 trials of 20: the top TOP_TRIALS instead (a quarter of 20).
    quantile = min(0.5, max(0.1, TOP_TRIALS / len(points)))
    evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(get_param_importances(study, evaluator=evaluator, normalize=True))


def importance(points: Sequence[tuple[dict[str, Any], float]], distributions: dict, *, at_pass: int | None = None,
               metric: str = "val_H", resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """PED-ANOVA importance of each searched parameter for `metric`, with a bootstrap spread.

    `points`: (the trial's searched values, its metric at the common pass) per trial. Returns a
    JSON-able dict: `status` ("ok", "too few trials", "no spread"), and for "ok" `params`
    {name: {"mean", "std"}} in decreasing order of importance (mean = on all trials).
    """
    out: dict[str, Any] = {"metric": metric, "pass": at_pass, "n_trials": len(points), "min_trials": MIN_TRIALS,
                           "evaluator": "PED-ANOVA (optuna)", "resamples": resamples}
    varied = {k: d for k, d in distributions.items() if not getattr(d, "single", lambda: False)()}
    if len(points) < MIN_TRIALS:
        return {**out, "status": "too few trials"}
    values = np.asarray([v for _, v in points], dtype=float)
    if np.ptp(values) == 0 or not varied:
        return {**out, "status": "no spread"}
    points = [({k: p[k] for k in varied}, v) for p, v in points]
    full = _importances(points, varied)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in full}
    for _ in range(resamples):
        pick = rng.integers(0, len(points), len(points))
        chosen = [points[i] for i in pick]
        if np.ptp([v for _, v in chosen]) == 0:
            continue
        for k, v in _importances(chosen, varied).items():
            samples[k].append(v)
    params = {k: {"mean": float(full[k]), "std": float(np.std(samples[k])) if samples[k] else math.nan}
              for k in sorted(full, key=lambda k: -full[k])}
    return {**out, "status": "ok", "params": params}


def importance_line(result: dict[str, Any] | None) -> str:
    """`importance: lr 0.61 +- 0.08, lambda 0.27 +- 0.07, k 0.12 +- 0.05` (or why there is none)."""
    if not result:
        return "importance: not computed"
    where = f" at pass {result['pass']}" if result.get("pass") else ""
    if result.get("status") == "too few trials":
        return f"importance: too few trials ({result['n_trials']} < {result['min_trials']}) to rank hyperparameters"
    if result.get("status") == "no spread":
        return f"importance: every trial had the same {result['metric']}{where}; nothing to rank"
    parts = [f"{label(k)} {v['mean']:.2f} +- {v['std']:.2f}" for k, v in result["params"].items()]
    return "importance: " + ", ".join(parts) + f"   ({result['metric']}{where}, {result['n_trials']} trials)"


def pareto_front(acc_seen: Sequence[float], acc_unseen: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both accuracies (ties kept), by acc_seen."""
    s, u = np.asarray(acc_seen, dtype=float), np.asarray(acc_unseen, dtype=float)
    front = []
    for i in range(len(s)):
        if not (math.isfinite(s[i]) and math.isfinite(u[i])):
            continue
        dominated = ((s >= s[i]) & (u >= u[i]) & ((s > s[i]) | (u > u[i]))).any()
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: s[i])
