"""The protocol diagnostic: its sealed reading is harness.train's, its schedule is the authors', and
no module of the search, train or final stages can reach the code that looks at test repeatedly."""

from __future__ import annotations

import ast
from dataclasses import asdict
from pathlib import Path

import pytest

from harness.config import TrainConfig
from harness.reproduce import protocol

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = "harness.reproduce.protocol"


# ---------------------------------------------------------------- the import graph


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(name: str, path: Path) -> set[str]:
    """Modules of this repository that `path` imports anywhere (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            # a module and every package above it run on import
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if _module_file(candidate) is not None:
                    found.add(candidate)
    return found


def reachable(roots: list[str]) -> set[str]:
    seen, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is not None:
            stack.extend(_imports(name, path) - seen)
    return seen


def _stage_roots() -> list[str]:
    """harness.search as a package (harness/search/*) or as modules (harness/search*.py), train, trainer."""
    roots = ["harness.train", "harness.trainer"]
    package = ROOT / "harness" / "search"
    if package.is_dir():
        roots += [f"harness.search.{p.stem}" if p.stem != "__init__" else "harness.search"
                  for p in package.rglob("*.py")]
    roots += [f"harness.{p.stem}" for p in (ROOT / "harness").glob("search*.py")]
    return roots


def test_the_import_walk_sees_function_level_imports():
    # The reproduce CLI imports the protocol inside a function: the walk must still find it.
    assert PROTOCOL in reachable(["harness.reproduce.__main__"])


def test_no_search_train_or_final_stage_module_reaches_the_protocol_diagnostic():
    roots = _stage_roots()
    assert any(r.startswith("harness.search") for r in roots), "no search module found to check"
    assert any("final" in r for r in roots), "no final-stage module found to check"
    reached = reachable(roots)
    assert "harness.trainer" in reached and "harness.data.splits" in reached  # the walk does walk
    assert PROTOCOL not in reached
    assert "harness.reproduce" not in reached  # nor the package that holds it


# ---------------------------------------------------------------- the authors' schedule


def test_evaluation_schedule_follows_the_authors_notebooks():
    assert protocol.evaluation_steps("cub", 10, 3) == [10, 20, 30]  # once per epoch
    assert protocol.evaluation_steps("synthetic-sun", 7, 2) == [7, 14]
    df = protocol.evaluation_steps("deepfashion", 4098, 2)
    assert df[:2] == [200, 400] and df[-1] == 8196 and len(df) == protocol.DEEPFASHION_EVALUATIONS + 1
    stand_in = protocol.evaluation_steps("synthetic-deepfashion", 34, 2)  # as many evaluations, spread
    assert len(stand_in) == protocol.DEEPFASHION_EVALUATIONS and stand_in[-1] == 68
    assert protocol.DEEPFASHION_EVALUATIONS == 40


# ---------------------------------------------------------------- sealed = harness.train


def test_sealed_reading_is_exactly_the_trainers_final_stage_result():
    from harness.trainer import fit

    config = TrainConfig(dataset="synthetic-tiny", seed=1, epochs=2, num_threads=1).validate()
    out = protocol.protocol_task(asdict(config))
    assert "error" not in out, out.get("error")
    plain = fit(config)  # no callback: what python -m harness.train reports
    for key in ("test_acc_seen", "test_acc_unseen", "test_H", "test_zsl_top1"):
        assert out["metrics"][key] == pytest.approx(plain.metrics[key], abs=0.0), key
    assert out["extra"]["last_evaluation_equals_sealed"]
    assert [r["step"] for r in out["curve"]] == protocol.evaluation_steps("synthetic-tiny", out["extra"]
                                                                          ["steps_per_epoch"], 2)


def test_readings_select_on_test_and_inflation_is_paired():
    from harness.reproduce.runner import Outcome

    base = TrainConfig(dataset="synthetic-tiny")

    def outcome(seed, sealed, curve):
        recs = [{"step": i + 1, "epoch": i + 1.0, "diagnostic_test_acc_seen": h, "diagnostic_test_acc_unseen": h,
                 "diagnostic_test_H": h, "diagnostic_swept_acc_seen": h + 0.1, "diagnostic_swept_acc_unseen": h + 0.1,
                 "diagnostic_swept_H": h + 0.1, "diagnostic_swept_shift": 0.0} for i, h in enumerate(curve)]
        return Outcome(base.__class__(**{**asdict(base), "seed": seed}),
                       {"test_acc_seen": sealed, "test_acc_unseen": sealed, "test_H": sealed}, curve=recs,
                       extra={"last_evaluation_equals_sealed": True})

    outs = {o.config: o for o in (outcome(0, 0.2, [0.1, 0.5, 0.2]), outcome(1, 0.3, [0.3, 0.4, 0.3]))}
    readings = protocol.read_outcomes(base, 2, outs, None, {})
    assert readings.stat("authors", "H").values == pytest.approx({0: 50.0, 1: 40.0})
    assert readings.inflation("authors").values == pytest.approx({0: 30.0, 1: 10.0})
    assert readings.inflation("authors-shift").values == pytest.approx({0: 40.0, 1: 20.0})
    text = protocol.render_markdown(readings, "synthetic-tiny", 2, "once per epoch: 3 over 3 steps")
    assert "| +20.0 ± 14.1 [+10.0, +30.0] |" in text and "(d)" not in text
