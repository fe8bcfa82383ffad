"""Tables 2-4 of the paper as grids of fits, and their rendering beside the published numbers.

A table is a list of rows; a row is one published line, the configuration that reproduces it
with the paper's settings (None for a context row: a method of the paper's table that this
harness does not run), and optionally the tuned configuration of a finished search. Every row
is fitted once per seed; the printed cell is the mean +- sample standard deviation over seeds,
in percent like the paper. On a synthetic stand-in the paper's numbers print beside ours but
their difference is not comparable: only the directions of Table 4's claims compare.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace

import search_spaces
from harness.config import TrainConfig
from harness.data.registry import stand_in
from harness.errors import InputError
from harness.reproduce import paper
from harness.reproduce.runner import Outcome, Trial
from harness.reproduce.tuned import TunedConfig, apply_tuned, pick

METRIC_KEYS = {"acc_s": "test_acc_seen", "acc_u": "test_acc_unseen", "H": "test_H", "zsl_top1": "test_zsl_top1"}
METRIC_NAMES = {"acc_s": "acc_s", "acc_u": "acc_u", "H": "H", "zsl_top1": "ZSL T1"}
SETTINGS = ("paper", "tuned")


@dataclass(frozen=True)
class RowSpec:
    id: str
    label: str
    columns: dict[str, str]  # descriptive columns printed before the numbers
    paper: paper.PaperRow | None
    config: TrainConfig | None  # the paper's settings, seed 0; None: a context row, not run here
    tuned: TrainConfig | None = None

    def config_for(self, setting: str) -> TrainConfig | None:
        return self.config if setting == "paper" else self.tuned

    @property
    def run_here(self) -> bool:
        return self.config is not None

    @property
    def comparable(self) -> bool:
        """Whether ours - paper means anything: not on a synthetic stand-in of the paper's data."""
        return self.config is not None and not is_stand_in(self.config.dataset)


def is_stand_in(dataset: str) -> bool:
    return dataset.startswith("synthetic")


@dataclass
class TableSpec:
    name: str
    title: str
    metrics: tuple[str, ...]
    columns: tuple[str, ...]
    rows: list[RowSpec]
    notes: list[str] = field(default_factory=list)

    @property
    def settings(self) -> tuple[str, ...]:
        return SETTINGS if any(r.tuned is not None for r in self.rows) else ("paper",)

    def trials(self, seeds: int) -> list[Trial]:
        out = []
        for row in self.rows:
            for setting in self.settings:
                config = row.config_for(setting)
                if config is None:
                    continue
                out.extend(Trial(self.name, row.id, setting, replace(config, seed=s)) for s in range(seeds))
        return out


# ---------------------------------------------------------------- aggregation


@dataclass
class Stat:
    values: dict[int, float]  # seed -> value in percent

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values.values()) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values.values()) / (self.n - 1))


@dataclass
class RowResult:
    spec: RowSpec
    stats: dict[str, dict[str, Stat]]  # setting -> metric -> Stat
    errors: dict[str, list[str]]  # setting -> error messages of failed seeds
    expected: int  # seeds per setting
    run_ids: dict[str, list[str]]


def aggregate(spec: TableSpec, outcomes: dict[TrainConfig, Outcome], seeds: int) -> list[RowResult]:
    results = []
    for row in spec.rows:
        stats: dict[str, dict[str, Stat]] = {}
        errors: dict[str, list[str]] = {}
        run_ids: dict[str, list[str]] = {}
        for setting in spec.settings:
            base = row.config_for(setting)
            if base is None:
                continue
            per_metric = {m: Stat({}) for m in spec.metrics}
            for seed in range(seeds):
                outcome = outcomes.get(replace(base, seed=seed))
                if outcome is None:
                    continue
                if outcome.run_id:
                    run_ids.setdefault(setting, []).append(outcome.run_id)
                if not outcome.ok:
                    errors.setdefault(setting, []).append(outcome.error or "failed")
                    continue
                for m in spec.metrics:
                    value = outcome.metrics.get(METRIC_KEYS[m])
                    if value is not None and math.isfinite(value):
                        per_metric[m].values[seed] = 100.0 * value
            stats[setting] = per_metric
        results.append(RowResult(row, stats, errors, seeds, run_ids))
    return results


# ---------------------------------------------------------------- rendering


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def _cell(stat: Stat | None, expected: int) -> str:
    if stat is None:
        return "-"
    if stat.n == 0:
        return "failed"
    text = f"{stat.mean:.1f}" if stat.n == 1 and expected == 1 else f"{stat.mean:.1f} ± {stat.std:.1f}"
    return text if stat.n == expected else f"{text} ({stat.n}/{expected})"


def _diff(stat: Stat | None, published: float | None) -> float | None:
    if stat is None or stat.n == 0 or published is None:
        return None
    return stat.mean - published


def _paper_value(row: RowSpec, metric: str) -> float | None:
    return None if row.paper is None else row.paper.values.get(metric)


NOT_RUN, NOT_COMPARABLE = "not run here", "not comparable"


def _metric_cells(res: RowResult, metric: str, tuned: bool) -> list[str]:
    """paper, ours, Δ (and tuned) of one metric in one row."""
    row = res.spec
    published = _paper_value(row, metric)
    mark = " (!)" if metric == "H" and row.paper is not None and row.paper.inconsistent else ""
    if not row.run_here:
        return [_fmt(published) + mark, NOT_RUN, "-"] + (["-"] if tuned else [])
    ours = res.stats.get("paper", {}).get(metric)
    diff = _diff(ours, published)
    delta = NOT_COMPARABLE if not row.comparable else "n/a" if diff is None else f"{diff:+.1f}"
    cells = [_fmt(published) + mark, _cell(ours, res.expected), delta]
    return cells + ([_cell(res.stats.get("tuned", {}).get(metric), res.expected)] if tuned else [])


def _footnotes(spec: TableSpec, results: list[RowResult]) -> list[str]:
    rows = [r.spec for r in results]
    lines = ["Numbers in percent; paper: as printed (the source column of harness/paper/ names the table); "
             "ours: mean ± std over seeds (paper settings); Δ = ours - paper."]
    lines += [f"(!) inconsistent published row, {r.label}: {r.paper.flag_note()}"
              for r in rows if r.paper is not None and r.paper.inconsistent]
    if any(not r.run_here for r in rows):
        lines.append(f"{NOT_RUN}: a method of the paper's table that this harness does not implement; "
                     "its published numbers are context.")
    if any(r.run_here and not r.comparable for r in rows):
        lines.append(f"{NOT_COMPARABLE}: ours ran on a synthetic stand-in, not the paper's data, so ours - paper "
                     "means nothing; only the directions of the paper's claims compare.")
    if any(r.run_here and r.paper is not None and None in r.paper.values.values() for r in rows):
        lines.append("n/a: the paper prints no number here.")
    for res in results:
        for setting, errs in res.errors.items():
            lines.append(f"failed: {res.spec.label} [{setting}] {len(errs)}/{res.expected} seeds: {errs[0]}")
    return lines + list(spec.notes)


def render_markdown(spec: TableSpec, results: list[RowResult]) -> str:
    tuned = "tuned" in spec.settings
    header = list(spec.columns)
    for m in spec.metrics:
        name = METRIC_NAMES[m]
        header += [f"{name} paper", f"{name} ours", "Δ"] + ([f"{name} tuned"] if tuned else [])
    lines = [f"### {spec.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for res in results:
        cells = [res.spec.columns[c] for c in spec.columns]
        for m in spec.metrics:
            cells += _metric_cells(res, m, tuned)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(_footnotes(spec, results))
    return "\n".join(lines) + "\n"


def table_records(spec: TableSpec, results: list[RowResult]) -> list[dict[str, object]]:
    """One flat record per row (CSV and JSON)."""
    records = []
    for res in results:
        row = res.spec
        rec: dict[str, object] = {"table": spec.name, "row": row.id, "label": row.label, **row.columns,
                                  "dataset": "" if row.config is None else row.config.dataset,
                                  "model": "" if row.config is None else row.config.model,
                                  "run_here": row.run_here, "comparable": row.comparable}
        for m in spec.metrics:
            published = _paper_value(row, m)
            rec[f"{m}_paper"] = published
            for setting in spec.settings:
                stat = res.stats.get(setting, {}).get(m)
                prefix = "ours" if setting == "paper" else "tuned"
                rec[f"{m}_{prefix}_mean"] = None if stat is None or stat.n == 0 else round(stat.mean, 4)
                rec[f"{m}_{prefix}_std"] = None if stat is None or stat.n == 0 else round(stat.std, 4)
                rec[f"{m}_{prefix}_n"] = 0 if stat is None else stat.n
            diff = _diff(res.stats.get("paper", {}).get(m), published) if row.comparable else None
            rec[f"{m}_diff"] = None if diff is None else round(diff, 4)
        rec["paper_source"] = "" if row.paper is None else row.paper.source
        rec["paper_h_recomputed"] = (None if row.paper is None or row.paper.recomputed_h is None
                                     else round(row.paper.recomputed_h, 2))
        rec["failures"] = sum(len(e) for e in res.errors.values())
        records.append(rec)
    return records


def render_csv(records: list[dict[str, object]]) -> str:
    if not records:
        return ""
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in records for k in r))
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in keys})
    return buf.getvalue()


# ---------------------------------------------------------------- claims of Table 4


VERDICT_RULE = ("verdict: holds = ours has the paper's sign and |mean| > one std of the per-seed paired "
                "differences; weak = the paper's sign within one std (always so with 1 seed: no spread); "
                "fails = the opposite sign, or no difference. A claim's verdict is its weakest comparison's.")
VERDICT_ORDER = ("fails", "weak", "holds")


def verdict(paper_delta: float | None, diffs: dict[int, float]) -> str:
    """The stated rule (VERDICT_RULE) on one comparison: the paper's delta and ours per seed."""
    if not diffs or not paper_delta:
        return "n/a"
    stat = Stat(dict(diffs))
    if stat.mean * paper_delta <= 0:
        return "fails"
    return "holds" if stat.n > 1 and abs(stat.mean) > stat.std else "weak"


@dataclass
class PairCheck:
    row: str
    versus: str
    metric: str
    paper_delta: float | None  # row - versus in the paper, points
    diffs: dict[int, float]  # seed -> ours, row - versus, points

    @property
    def with_paper_sign(self) -> int:
        return sum(d * (self.paper_delta or 0) > 0 for d in self.diffs.values())

    @property
    def verdict(self) -> str:
        return verdict(self.paper_delta, self.diffs)


@dataclass
class ClaimCheck:
    text: str
    pairs: list[PairCheck]

    @property
    def verdict(self) -> str:
        verdicts = [p.verdict for p in self.pairs if p.verdict != "n/a"]
        return min(verdicts, key=VERDICT_ORDER.index) if verdicts else "n/a"


def check_claims(results: list[RowResult], claims: list[paper.Claim], setting: str = "paper") -> list[ClaimCheck]:
    """Each claim's comparisons, ours paired by seed (row - versus), grouped by the claim's text."""
    by_row = {r.spec.id: r.stats.get(setting, {}) for r in results}
    checks: dict[str, ClaimCheck] = {}
    for claim in claims:
        a = by_row.get(claim.row, {}).get(claim.metric)
        b = by_row.get(claim.versus, {}).get(claim.metric)
        diffs = {} if a is None or b is None else {s: a.values[s] - b.values[s] for s in a.values if s in b.values}
        check = checks.setdefault(claim.text, ClaimCheck(claim.text, []))
        check.pairs.append(PairCheck(claim.row, claim.versus, claim.metric, claim.paper_delta, diffs))
    return list(checks.values())


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


def _ours_delta(p: PairCheck) -> str:
    if not p.diffs:
        return "n/a (a run failed)"
    stat = Stat(dict(p.diffs))
    return f"{stat.mean:+.1f} ± {stat.std:.1f}" if stat.n > 1 else f"{stat.mean:+.1f}"


def render_claims(checks: list[ClaimCheck], dataset: str, seeds: int) -> str:
    lines = [f"### Claims of the paper's Table 4, checked on {dataset} ({seeds} seed(s), paper settings)", "",
             "| claim | rows | metric | paper Δ | ours Δ | seeds with the paper's sign | verdict |",
             "|---|---|---|---|---|---|---|"]
    for check in checks:
        for p in check.pairs:
            lines.append(f"| {check.text} | {p.row} vs {p.versus} | {METRIC_NAMES[p.metric]} | {_signed(p.paper_delta)} "
                         f"| {_ours_delta(p)} | {p.with_paper_sign}/{len(p.diffs)} | {p.verdict} |")
    lines += ["", "Δ = row - the row it is compared with, in points; ours: mean ± std over seeds of the per-seed "
              "paired differences (rows as numbered in the table above).", VERDICT_RULE]
    lines += [f"- {check.text}: {check.verdict.upper()}" for check in checks]
    return "\n".join(lines) + "\n"


def claims_records(checks: list[ClaimCheck]) -> list[dict[str, object]]:
    out = []
    for check in checks:
        for p in check.pairs:
            stat = Stat(dict(p.diffs))
            out.append({"claim": check.text, "claim_verdict": check.verdict, "row": p.row, "versus": p.versus,
                        "metric": p.metric, "paper_delta": p.paper_delta,
                        "diff_mean": None if not p.diffs else round(stat.mean, 4),
                        "diff_std": None if not p.diffs else round(stat.std, 4),
                        "seeds_with_paper_sign": p.with_paper_sign, "seeds": len(p.diffs), "verdict": p.verdict})
    return out


# ---------------------------------------------------------------- table definitions


def model_defaults(model: str) -> dict[str, object]:
    """The defaults a model's search space declares (the paper's for DAZLE), as TrainConfig values."""
    if not search_spaces.exists(model):
        return {}
    return search_spaces.load(model).config_defaults()


def base_config(model: str, dataset: str, common: dict[str, object], variant: str = "full") -> TrainConfig:
    """The paper's settings for `model` on `dataset`: final stage, seed 0, the model's defaults."""
    values = {k: v for k, v in model_defaults(model).items() if k not in ("model", "dataset")}
    config = TrainConfig(**{**values, **common, "model": model, "dataset": dataset, "stage": "final", "seed": 0})
    return (config.with_variant(variant) if model == "dazle" else config).validate()


def _tuned_for(config: TrainConfig, tuned: list[TunedConfig]) -> TrainConfig | None:
    chosen = pick(tuned, config.model, config.dataset)
    return None if chosen is None else apply_tuned(config, chosen)


ALL_STAND_INS = "synthetic"  # as a bare --dataset name: each paper dataset's own registered stand-in


def _bare_name(item: str, paper_datasets: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (paper, ours) pairs of a bare --dataset name (see parse_dataset_map)."""
    if item in paper_datasets:
        return [(item, item)]
    if item == ALL_STAND_INS:
        return [(d, stand_in(d) or ALL_STAND_INS) for d in paper_datasets]
    picked = [(d, item) for d in paper_datasets if stand_in(d) == item]
    return picked or [(d, item) for d in paper_datasets]


def parse_dataset_map(text: str | None, paper_datasets: tuple[str, ...]) -> list[tuple[str, str]]:
    """--dataset for tables over several datasets.

    Comma-separated items, each `PAPER=OURS` (run OURS in place of the paper's PAPER) or a bare
    name: one of the paper's datasets runs itself; `synthetic` maps each paper dataset to its own
    stand-in (the registry's stand_in: cub -> synthetic-cub, cub-ss -> synthetic-cub-ss, ...); a
    registered stand-in (e.g. synthetic-cub) picks the paper datasets it stands in for; any other
    name stands in for all of them. Default: every paper dataset as itself.
    """
    if not text:
        return [(d, d) for d in paper_datasets]
    pairs: list[tuple[str, str]] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        if "=" in item:
            left, right = (s.strip() for s in item.split("=", 1))
            if left not in paper_datasets or not right:
                raise InputError(f"--dataset {item}: expected PAPER=OURS with PAPER one of {', '.join(paper_datasets)}")
            pairs.append((left, right))
        else:
            pairs.extend(_bare_name(item, paper_datasets))
    if not pairs:
        raise InputError(f"--dataset {text!r}: no dataset named")
    seen = set()
    return [p for p in pairs if not (p[0] in seen or seen.add(p[0]))]


def _display(paper_dataset: str, ours: str) -> str:
    return paper_dataset.upper() if ours == paper_dataset else f"{paper_dataset.upper()} (stand-in: {ours})"


# The paper's methods this harness runs: key in harness/paper/ -> (model, DAZLE variant).
RUN_HERE = {
    "eszsl": ("eszsl", "full"),
    "devise": ("devise", "full"),
    "dazle-seen-ce": ("dazle", "seen-ce"),
    "dazle": ("dazle", "full"),
}
TABLE2_DATASETS = ("cub", "sun", "awa2")
TABLE3_DATASETS = ("cub-ss", "cub")


def _method_row(row_id: str, label: str, columns: dict[str, str], published: paper.PaperRow, ours: str,
                common: dict, tuned: list[TunedConfig]) -> RowSpec:
    """A row of Table 2 or 3: run here with the paper's settings, or a context row (config None)."""
    method = published.keys["method"]
    if not published.run_here:
        return RowSpec(row_id, label, columns, published, None)
    if method not in RUN_HERE:
        raise ValueError(f"harness/paper/: method {method!r} is marked run_here but has no model here")
    model, variant = RUN_HERE[method]
    config = base_config(model, ours, common, variant)
    return RowSpec(row_id, label, columns, published, config, _tuned_for(config, tuned))


def table2_spec(pairs: list[tuple[str, str]], common: dict, tuned: list[TunedConfig]) -> TableSpec:
    rows = []
    for paper_ds, ours in pairs:
        for published in (r for r in paper.table2() if r.keys["dataset"] == paper_ds):
            label = published.label or published.keys["method"]
            rows.append(_method_row(f"{paper_ds}/{published.keys['method']}", f"{label} on {paper_ds.upper()}",
                                    {"dataset": _display(paper_ds, ours), "method": label},
                                    published, ours, common, tuned))
    notes = ["Paper settings: DAZLE lambda 0.1, RMSprop lr 1e-4, batch 50, the dataset's default epochs; "
             "ESZSL and DeViSE have no setting in the DAZLE paper (its rows for them are GBU's, tuned on "
             "validation there), so ours use the defaults of search_spaces/<model>.py or TrainConfig; "
             "pass --tuned to run a search's best configuration beside them."]
    return TableSpec("table2", "Table 2: GZSL on CUB, SUN, AWA2 (acc_s, acc_u, H)", ("acc_s", "acc_u", "H"),
                     ("dataset", "method"), rows, notes)


def table3_spec(pairs: list[tuple[str, str]], common: dict, tuned: list[TunedConfig]) -> TableSpec:
    rows = []
    for paper_ds, ours in pairs:
        for published in (r for r in paper.table3() if r.keys["dataset"] == paper_ds):
            split = published.keys["split"]
            label = published.label or published.keys["method"]
            rows.append(_method_row(f"{paper_ds}/{published.keys['method']}", f"{label}, CUB {split}",
                                    {"split": f"{split} ({'standard' if split == 'SS' else 'proposed'})",
                                     "dataset": _display(paper_ds, ours), "method": label},
                                    published, ours, common, tuned))
    return TableSpec("table3", "Table 3: ZSL accuracy on CUB, standard split (SS) vs proposed split (PS)",
                     ("zsl_top1",), ("split", "dataset", "method"), rows)


def _switch(text: str, name: str) -> bool:
    if text.strip() not in ("0", "1"):
        raise ValueError(f"harness/paper/table4.csv: column {name!r} holds {text!r}, expected 0 or 1")
    return text.strip() == "1"


def table4_spec(ours: str, common: dict, tuned: list[TunedConfig]) -> TableSpec:
    rows = []
    for published in paper.table4():
        e = published.extra
        switches = {name: _switch(e[name], name) for name in
                    ("dense_attention", "self_calibration", "attribute_attention", "trainable_semantics")}
        config = replace(base_config("dazle", ours, common), **switches).validate()
        mark = {True: "✓", False: "-"}
        rows.append(RowSpec(
            published.keys["row"], e.get("label", published.keys["row"]),
            {"#": published.keys["row"], "configuration": e.get("label", ""),
             "dense att.": mark[switches["dense_attention"]], "self-calib.": mark[switches["self_calibration"]],
             "att. over attr.": mark[switches["attribute_attention"]],
             "v_a": "trainable" if switches["trainable_semantics"] else "fixed"},
            published, config, _tuned_for(config, tuned)))
    title = "Table 4: DAZLE ablation on DeepFashion" + ("" if ours == "deepfashion" else f" (stand-in: {ours})")
    return TableSpec("table4", title, ("acc_s", "acc_u", "H"),
                     ("#", "configuration", "dense att.", "self-calib.", "att. over attr.", "v_a"), rows)
