"""Result tables (CSV + Markdown) and the printed summary of a search.

The trial and final tables the driver writes to `results/<model>/` and logs to the parent run,
and the summary printed at the end, come from here, so their columns and number formats are
defined once (and `lam` is spelled `lambda`, as in MLflow). Plain Python: the CLI imports it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tune imports Ray; the CLI's --help imports this module
    from harness.search.tune import TrialRecord

TRIAL_METRICS = ("val_H", "val_acc_seen", "val_acc_unseen", "val_zsl_top1", "val_ausuc", "loss")
SHORT = {"test_acc_seen": "acc_s", "test_acc_unseen": "acc_u", "test_H": "H", "test_zsl_top1": "ZSL T1",
         "test_ausuc": "AUSUC"}


def param_name(name: str) -> str:
    """MLflow spelling of a TrainConfig field (lam -> lambda)."""
    return "lambda" if name == "lam" else name


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def trial_rows(records: Sequence[TrialRecord], params: Sequence[str],
               names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per trial; `names` (Ray trial id -> MLflow run name) adds the run's name first."""
    rows = []
    for r in records:
        row: dict[str, Any] = {"run": names.get(r.trial_id, "")} if names is not None else {}
        row.update({"trial_id": r.trial_id, "status": r.status, "paper_config": r.paper,
                    "iterations": r.iterations})
        row.update({param_name(p): r.params.get(p, "") for p in params})
        row.update({m: r.metrics.get(m, float("nan")) for m in TRIAL_METRICS})
        row["error"] = r.error
        rows.append(row)
    return rows


def final_rows(results: Sequence[dict[str, Any]], summary: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = [{"seed": r["seed"], "run_id": r["run_id"], **{k: r.get(k, float("nan")) for k in SHORT}} for r in results]
    if summary:
        rows.append({"seed": "mean", "run_id": "", **{k: summary[k]["mean"] for k in summary}})
        rows.append({"seed": "std", "run_id": "", **{k: summary[k]["std"] for k in summary}})
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k, "")).replace("|", "/") for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict[str, Any]], folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.csv", folder / f"{stem}.md"]
    paths[0].write_text(to_csv(rows))
    paths[1].write_text(to_markdown(rows))
    return paths


def config_line(params: dict[str, Any]) -> str:
    return "  ".join(f"{param_name(k)}={fmt(v)}" for k, v in params.items())


def summary_text(s: dict[str, Any]) -> str:
    """The human summary of one model's search (the dict `python -m harness.search --json` also prints)."""
    counts = s["trial_counts"]
    lines = [
        f"{s['model']} on {s['dataset']}: {sum(counts.values())} trials "
        f"({', '.join(f'{v} {k}' for k, v in counts.items())}) in {s['search_seconds']:.0f} s of search",
        f"  best configuration   {config_line(s['best_config'])}   ({s.get('best_run') or 'trial ' + s['best_trial']})",
        f"  validation H         best {fmt(s['best_val_H'])}   paper configuration {fmt(s['paper_config_val_H'])}",
    ]
    test = s.get("test") or {}
    if test:
        n = next(iter(test.values()))["n"]
        lines.append(f"  test, retrained on trainval ({n} seed{'s' if n != 1 else ''}), mean +- std:")
        lines.append("    " + "  ".join(f"{SHORT[k]:>16s}" for k in test))
        lines.append("    " + "  ".join(f"{test[k]['mean']:.4f} +- {test[k]['std']:.4f}".rjust(16) for k in test))
    if s.get("importance"):
        from harness.search.insight import importance_line

        lines.append(f"  {importance_line(s['importance'])}")
    lines.append(f"  MLflow parent run    {s['parent_run_id']}")
    return "\n".join(lines)
