"""The published numbers of Huynh & Elhamifar (CVPR 2020) as data, and their sanity check.

The numbers live in harness/paper/*.csv (package data, read with importlib.resources) so a
correction is a one-line data change, never a code change. Each row names its table in the
`source` column; rows of methods this harness does not run (`run_here` 0) are printed as
context. Every GZSL row's printed H is checked against 2*s*u/(s+u) of its printed accuracies,
because a published table can be internally inconsistent (Table 2 prints H 12.1 for ESZSL on
SUN where 2*27.9*11.0/38.9 = 15.8).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from importlib.resources import files

# Printed numbers have one decimal: s and u are each off by up to 0.05 and H by up to 0.05;
# |dH/ds| + |dH/du| <= 2, so an honest row's H is within 0.15 of the recomputed value.
H_TOLERANCE = 0.15


@dataclass(frozen=True)
class PaperRow:
    """One published row: its key columns as text, its numbers (percent, None when missing)."""

    keys: dict[str, str]
    values: dict[str, float | None]
    source: str
    recomputed_h: float | None = None  # set when the printed H disagrees with its accuracies
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def inconsistent(self) -> bool:
        return self.recomputed_h is not None

    @property
    def run_here(self) -> bool:
        """False for a context row: a method of the paper's table that this harness does not run."""
        return self.extra.get("run_here", "1").strip() != "0"

    @property
    def label(self) -> str:
        return self.extra.get("label", "")

    def flag_note(self) -> str:
        if not self.inconsistent:
            return ""
        s, u, h = self.values["acc_s"], self.values["acc_u"], self.values["H"]
        return f"printed H {h:.1f}, but 2*{s:.1f}*{u:.1f}/({s:.1f}+{u:.1f}) = {self.recomputed_h:.1f}"


def harmonic(acc_s: float, acc_u: float) -> float:
    return 0.0 if acc_s + acc_u <= 0 else 2.0 * acc_s * acc_u / (acc_s + acc_u)


def check_h(values: dict[str, float | None], tolerance: float = H_TOLERANCE) -> float | None:
    """The recomputed H when a row's printed H disagrees with its acc_s / acc_u, else None."""
    s, u, h = values.get("acc_s"), values.get("acc_u"), values.get("H")
    if s is None or u is None or h is None:
        return None
    recomputed = harmonic(s, u)
    return recomputed if abs(recomputed - h) > tolerance else None


def read_csv(name: str) -> list[dict[str, str]]:
    """Rows of harness/paper/<name> as dicts of strings."""
    text = files("harness").joinpath("paper", name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _number(text: str, table: str, column: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError as err:
        raise ValueError(f"harness/paper/{table}: column {column!r} holds {text!r}, expected a number") from err


def load_table(name: str, key_columns: tuple[str, ...], value_columns: tuple[str, ...]) -> list[PaperRow]:
    """Read one table; numbers become floats (None when empty), H is checked on every row."""
    rows = []
    for raw in read_csv(name):
        values = {c: _number(raw.get(c, ""), name, c) for c in value_columns}
        extra = {k: v for k, v in raw.items() if k not in key_columns and k not in value_columns and k != "source"}
        rows.append(PaperRow(
            keys={c: raw[c] for c in key_columns}, values=values, source=raw.get("source", ""),
            recomputed_h=check_h(values), extra=extra,
        ))
    return rows


def table2() -> list[PaperRow]:
    return load_table("table2.csv", ("dataset", "method"), ("acc_s", "acc_u", "H"))


def table3() -> list[PaperRow]:
    return load_table("table3.csv", ("split", "dataset", "method"), ("zsl_top1",))


def table4() -> list[PaperRow]:
    return load_table("table4.csv", ("row",), ("acc_s", "acc_u", "H"))


@dataclass(frozen=True)
class Claim:
    """One statement of the paper's text about Table 4: `metric` of row `row` minus row `versus`.

    `paper_delta` is computed from harness/paper/table4.csv; `stated_delta` is the number the
    paper's text gives (None where it gives only a direction), kept so a test can check the two.
    """

    text: str
    metric: str
    row: str
    versus: str
    paper_delta: float | None
    stated_delta: float | None = None


def table4_claims() -> list[Claim]:
    values = {r.keys["row"]: r.values for r in table4()}
    claims = []
    for r in read_csv("table4_claims.csv"):
        a, b = values[r["row"]].get(r["metric"]), values[r["versus"]].get(r["metric"])
        delta = None if a is None or b is None else round(a - b, 4)
        claims.append(Claim(r["claim"], r["metric"], r["row"], r["versus"], delta,
                            _number(r.get("stated_delta", ""), "table4_claims.csv", "stated_delta")))
    return claims
