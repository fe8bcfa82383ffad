"""harness.reproduce without Ray: the paper's numbers as data, the H check, option parsing, tuned
configurations, the claims logic, the plots, and the one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import TrainConfig
from harness.errors import InputError
from harness.reproduce import __main__ as reproduce
from harness.reproduce import paper as reproduce_paper
from harness.reproduce import tables as reproduce_tables
from harness.reproduce.tuned import apply_tuned, load_tuned, parse_json, pick

# ---------------------------------------------------------------- the published numbers


def test_paper_tables_load_from_package_data():
    t2, t3, t4 = reproduce_paper.table2(), reproduce_paper.table3(), reproduce_paper.table4()
    run_here = {(r.keys["dataset"], r.keys["method"]) for r in t2 if r.run_here}
    assert run_here == {(d, m) for d in ("cub", "sun", "awa2") for m in ("eszsl", "devise", "dazle-seen-ce", "dazle")}
    by_key = {(r.keys["dataset"], r.keys["method"]): r for r in t2}
    assert by_key["cub", "eszsl"].values == {"acc_s": 63.8, "acc_u": 12.6, "H": 21.0}
    assert [by_key[d, "dazle"].values["H"] for d in ("cub", "sun", "awa2")] == [58.1, 33.2, 67.1]
    assert not by_key["cub", "cada-vae"].run_here and by_key["cub", "cada-vae"].values["H"] == 52.4
    dazle3 = {r.keys["dataset"]: r.values["zsl_top1"] for r in t3 if r.keys["method"] == "dazle"}
    assert dazle3 == {"cub-ss": 67.8, "cub": 65.9}
    assert {r.keys["method"] for r in t3 if r.run_here} == {"dazle-seen-ce", "dazle"}
    assert [r.keys["row"] for r in t4] == [str(i) for i in range(1, 8)]
    assert t4[6].values == {"acc_s": 38.1, "acc_u": 21.5, "H": 27.5}
    for row in t2 + t3 + t4:  # every row names its table; no row without a number
        assert row.source.startswith("paper Table ")
        assert any(v is not None for v in row.values.values())


def test_every_paper_row_passes_the_h_check_or_is_flagged():
    rows = reproduce_paper.table2() + reproduce_paper.table4()
    flagged = [r for r in rows if r.inconsistent]
    assert [(r.keys.get("dataset"), r.keys.get("method")) for r in flagged] == [("sun", "eszsl")]
    for r in rows:
        s, u, h = r.values["acc_s"], r.values["acc_u"], r.values["H"]
        assert r.inconsistent or abs(2 * s * u / (s + u) - h) <= reproduce_paper.H_TOLERANCE


def test_h_consistency_flag_fires_for_sun_eszsl_only():
    flagged = [r for r in reproduce_paper.table2() if r.inconsistent]
    assert [(r.keys["dataset"], r.keys["method"]) for r in flagged] == [("sun", "eszsl")]
    row = flagged[0]
    assert row.recomputed_h == pytest.approx(2 * 27.9 * 11.0 / 38.9)
    assert "printed H 12.1" in row.flag_note() and "15.8" in row.flag_note()


def test_h_check_tolerates_rounding_but_not_errors():
    assert reproduce_paper.check_h({"acc_s": 63.8, "acc_u": 12.6, "H": 21.0}) is None
    assert reproduce_paper.check_h({"acc_s": 63.8, "acc_u": 12.6, "H": 21.15}) is None  # within 0.15
    assert reproduce_paper.check_h({"acc_s": 63.8, "acc_u": 12.6, "H": 22.0}) == pytest.approx(21.04, abs=0.01)
    assert reproduce_paper.check_h({"acc_s": None, "acc_u": 12.6, "H": 22.0}) is None


def test_claims_compare_rows_that_differ_in_the_claimed_switch_only():
    rows = {r.keys["row"]: r.extra for r in reproduce_paper.table4()}
    switch_of = {"self-calibration": "self_calibration", "dense attention": "dense_attention",
                 "attention over attributes": "attribute_attention", "fixed v_a": "trainable_semantics"}
    switches = ("dense_attention", "self_calibration", "attribute_attention", "trainable_semantics")
    claims = reproduce_paper.table4_claims()
    assert len(claims) == 10
    for claim in claims:
        a, b = rows[claim.row], rows[claim.versus]
        differing = [s for s in switches if a[s] != b[s]]
        expected = next(v for k, v in switch_of.items() if claim.text.startswith(k))
        assert differing == [expected], claim
        # the text's deltas are the table's: +1.4 acc_s, +1.4 H, +1.3 H, -1.9 H
        if claim.stated_delta is not None:
            assert claim.paper_delta == pytest.approx(claim.stated_delta, abs=1e-6), claim
        else:
            assert claim.paper_delta > 0, claim  # self-calibration raises acc_u and H
    assert [c.stated_delta for c in claims[:4]] == [1.4, 1.4, 1.3, -1.9]


def test_markdown_prints_paper_numbers_flags_and_context_rows():
    spec = reproduce_tables.table2_spec([("sun", "synthetic")], {"epochs": 1}, [])
    results = reproduce_tables.aggregate(spec, {}, seeds=1)
    text = reproduce_tables.render_markdown(spec, results)
    assert "12.1 (!)" in text
    assert "printed H 12.1, but 2*27.9*11.0/(27.9+11.0) = 15.8" in text
    assert "| SUN (stand-in: synthetic) | DAZLE, L_ce + L_cal | 24.3 |" in text
    assert "| SUN (stand-in: synthetic) | CADA-VAE | 35.7 | not run here | - |" in text
    assert "not comparable" in text and "could not" not in text and "not found" not in text
    assert [r.spec.run_here for r in results].count(True) == 4


def _stat_results(rows: dict[str, dict[str, dict[int, float]]], dataset: str):
    """Results of table4's rows with the given per-seed values, as if fitted on `dataset`."""
    spec = reproduce_tables.table4_spec(dataset, {"epochs": 1}, [])
    return [reproduce_tables.RowResult(r, {"paper": {m: reproduce_tables.Stat(dict(v))
                                                     for m, v in rows.get(r.id, {}).items()}}, {}, 1, {})
            for r in spec.rows], spec


def test_difference_column_is_printed_on_real_data_and_not_comparable_on_a_stand_in():
    values = {"7": {"acc_s": {0: 40.0}, "acc_u": {0: 20.0}, "H": {0: 26.7}}}
    for dataset, expected in (("deepfashion", "| 26.7 | -0.8 |"), ("synthetic-deepfashion", "| 26.7 | not comparable |")):
        results, spec = _stat_results(values, dataset)
        text = reproduce_tables.render_markdown(spec, results)
        row7 = next(line for line in text.splitlines() if line.startswith("| 7 |"))
        assert "| 27.5 |" in row7 and expected in row7, row7
        records = {r["row"]: r for r in reproduce_tables.table_records(spec, results)}
        assert (records["7"]["H_diff"] is None) == (dataset != "deepfashion")


# ---------------------------------------------------------------- options


def test_dataset_map_forms():
    parse = reproduce_tables.parse_dataset_map
    paper = ("cub", "sun", "awa2")
    assert parse(None, paper) == [("cub", "cub"), ("sun", "sun"), ("awa2", "awa2")]
    assert parse("synthetic", paper) == [("cub", "synthetic-cub"), ("sun", "synthetic-sun"),
                                         ("awa2", "synthetic-awa2")]  # each its own stand-in
    assert parse("synthetic-sun", paper) == [("sun", "synthetic-sun")]  # a stand-in picks its dataset
    assert parse("synthetic-tiny", paper) == [(d, "synthetic-tiny") for d in paper]  # any other: all
    assert parse("synthetic", ("cub-ss", "cub")) == [("cub-ss", "synthetic-cub-ss"), ("cub", "synthetic-cub")]
    assert parse("cub=synthetic,awa2", paper) == [("cub", "synthetic"), ("awa2", "awa2")]
    with pytest.raises(InputError, match="--dataset"):
        parse("imagenet=synthetic", paper)


def test_table_specs_use_the_papers_settings():
    spec = reproduce_tables.table4_spec("synthetic-deepfashion", {"epochs": None}, [])
    assert len(spec.rows) == 7
    for row in spec.rows:
        c = row.config
        assert (c.stage, c.lam, c.lr, c.batch_size, c.epochs, c.model) == ("final", 0.1, 1e-4, 50, None, "dazle")
    # the paper's order: rows 1-3 without self-calibration, 4-7 with it; row 6 fixes v_a
    assert [r.config.self_calibration for r in spec.rows] == [False, False, False, True, True, True, True]
    assert [r.config.dense_attention for r in spec.rows] == [False, True, True, False, True, True, True]
    assert [r.config.trainable_semantics for r in spec.rows] == [True] * 5 + [False, True]
    trials = spec.trials(3)
    assert len(trials) == 21 and {t.config.seed for t in trials} == {0, 1, 2}
    t2 = reproduce_tables.table2_spec([("cub", "synthetic")], {}, [])
    by_id = {r.id: r.config for r in t2.rows if r.run_here}
    assert set(by_id) == {"cub/eszsl", "cub/devise", "cub/dazle-seen-ce", "cub/dazle"}
    assert by_id["cub/dazle-seen-ce"].self_calibration is False and by_id["cub/dazle"].self_calibration
    assert by_id["cub/eszsl"].model == "eszsl"


@pytest.mark.parametrize("argv, fragment", [
    (["table4", "--seeds", "0"], "--seeds"),
    (["table4", "--dataset", "no-such-set"], "unknown dataset"),
    (["table4", "--dataset", "synthetic", "--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (["fig4", "--dataset", "synthetic", "--k-grid", "0,500"], "--k-grid"),
    (["fig4", "--dataset", "synthetic", "--lambda-grid", "a,b"], "--lambda-grid"),
    (["table2", "--dataset", "cub=synthetic", "--tuned", "/no/such/file"], "--tuned"),
    (["table4", "--dataset", "synthetic", "--address", "127.0.0.1:1"], "--address"),
    (["table4", "--dataset", "synthetic,synthetic"], "one dataset"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, fragment, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    code = reproduce.run([*argv, "--tracking-uri", f"sqlite:///{db}", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err and "\n" not in err
    assert not db.exists()


def test_missing_cache_names_the_prepare_command_and_the_stand_in(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code = reproduce.run(["table4", "--dataset", "deepfashion", "--data-root", str(empty),
                          "--cache-dir", str(empty), "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err
    assert "python -m harness.features extract --dataset deepfashion --data-root DIR" in err
    assert "--dataset synthetic-deepfashion" in err
    assert not db.exists()


# ---------------------------------------------------------------- tuned configurations


def test_tuned_json_layouts_and_what_is_carried(tmp_path):
    flat = parse_json({"model": "dazle", "dataset": "synthetic", "lambda": "0.3", "num_attributes": "all",
                       "lr": 0.002, "self_calibration": "False", "epochs": 7, "unknown_key": 1}, "x")
    nested = parse_json({"best_config": {"lam": 0.3, "lr": 0.002}, "model": "dazle", "dataset": "synthetic"}, "x")
    by_model = parse_json({"dazle": {"model": "dazle", "lam": 0.3}, "eszsl": {"model": "eszsl", "eszsl_gamma": 10}}, "x")
    assert flat[0].values["lam"] == 0.3 and flat[0].values["num_attributes"] is None
    assert nested[0].values["lam"] == 0.3 and nested[0].dataset == "synthetic"
    assert {c.model for c in by_model} == {"dazle", "eszsl"}
    base = TrainConfig(dataset="synthetic", self_calibration=True, num_attributes=10)
    tuned = apply_tuned(base, flat[0])
    assert (tuned.lam, tuned.lr, tuned.epochs, tuned.num_attributes) == (0.3, 0.002, 7, None)
    assert tuned.self_calibration is True  # ablation switches stay the row's
    assert pick(flat, "dazle", "synthetic") is flat[0] and pick(flat, "dazle", "cub") is None
    path = tmp_path / "search"
    path.mkdir()
    (path / "best_config.json").write_text(json.dumps({"model": "eszsl", "eszsl_gamma": 10.0}))
    assert load_tuned(str(path), "sqlite:///unused.db")[0].values["eszsl_gamma"] == 10.0
    manifest = tmp_path / "storage"
    manifest.mkdir()
    (manifest / "search.json").write_text(json.dumps({  # what harness.search writes (harness/search/state.py)
        "version": 1, "settings": {"dataset": "synthetic"}, "models": {
            "dazle": {"stage": "done", "summary": {"dataset": "synthetic", "model": "dazle",
                                                   "best_config": {"lam": 0.2, "num_attributes": 30, "lr": 5e-4}}},
            "devise": {"stage": "searching"}}}))
    (found,) = load_tuned(str(manifest), "sqlite:///unused.db")
    assert (found.model, found.dataset, found.values["lam"], found.values["num_attributes"]) == (
        "dazle", "synthetic", 0.2, 30)
    (manifest / "search.json").write_text(json.dumps({"version": 1, "models": {"dazle": {"stage": "searching"}}}))
    with pytest.raises(InputError, match="no model of this search is done"):
        load_tuned(str(manifest / "search.json"), "sqlite:///unused.db")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        load_tuned(str(tmp_path / "bad.json"), "sqlite:///unused.db")
    with pytest.raises(InputError, match="model"):
        parse_json({"lam": 0.1}, "x")


@pytest.mark.slow
def test_tuned_from_a_search_parent_run_in_mlflow(tmp_path):
    from harness import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.experiment_id(uri, "search")
    parent = tracking.start_run(uri, exp, "search", params={"num_samples": 8})
    best = TrainConfig(dataset="synthetic", lam=0.4, lr=3e-4, num_attributes=20, stage="final", seed=1)
    for seed in (0, 1):  # one final retrain per seed, same configuration
        child = tracking.start_run(uri, exp, f"final-{seed}", params=best.as_params(), parent=parent)
        tracking.end_run(child)
    tracking.start_run(uri, exp, "trial-0", params={**best.as_params(), "stage": "search", "lambda": 9.0},
                       parent=parent)
    tracking.end_run(parent)
    found = load_tuned(parent.run_id, uri)
    assert len(found) == 1
    assert (found[0].model, found[0].dataset) == ("dazle", "synthetic")
    assert (found[0].values["lam"], found[0].values["lr"], found[0].values["num_attributes"]) == (0.4, 3e-4, 20)
    # a finished search's parent run also carries tables/summary.json, which wins over the children
    other = tracking.start_run(uri, exp, "search-2")
    tracking.log_text(other, json.dumps({"dataset": "synthetic", "model": "dazle", "best_config": {"lam": 0.05},
                                         "paper_config": {"lam": 0.1}}), "summary.json", "tables")
    tracking.end_run(other)
    (from_summary,) = load_tuned(f"runs:/{other.run_id}", uri)
    assert from_summary.values["lam"] == 0.05 and from_summary.dataset == "synthetic"
    with pytest.raises(InputError, match="no such MLflow run"):
        load_tuned("0" * 32, uri)


# ---------------------------------------------------------------- claims and plots


def _result(row_id: str, values: dict[str, dict[int, float]]):
    spec = reproduce_tables.RowSpec(row_id, row_id, {}, None, TrainConfig())
    stats = {"paper": {m: reproduce_tables.Stat(dict(v)) for m, v in values.items()}}
    return reproduce_tables.RowResult(spec, stats, {}, 3, {})


@pytest.mark.parametrize("paper_delta, diffs, expected", [
    (1.4, {0: 2.0, 1: 1.0, 2: 3.0}, "holds"),  # mean 2.0 > std 1.0
    (1.4, {0: 3.0, 1: -1.0, 2: 1.0}, "weak"),  # mean 1.0 < std 2.0
    (1.4, {0: 0.5}, "weak"),  # one seed: no spread to be beyond
    (-1.9, {0: -2.0, 1: -3.0}, "holds"),  # the paper's sign is negative
    (-1.9, {0: 1.0, 1: 2.0}, "fails"),
    (1.4, {0: -0.5, 1: 0.5}, "fails"),  # no difference on average
    (1.4, {}, "n/a"),  # a run failed
])
def test_verdict_rule(paper_delta, diffs, expected):
    assert reproduce_tables.verdict(paper_delta, diffs) == expected


def test_claims_pair_seeds_and_take_the_weakest_comparison():
    claims = [reproduce_paper.Claim("x raises H", "H", "b", "a", 1.0),
              reproduce_paper.Claim("x raises H", "H", "d", "c", 2.0),
              reproduce_paper.Claim("y lowers H", "H", "a", "b", -1.0)]
    results = [_result("a", {"H": {0: 10, 1: 10, 2: 10}}), _result("b", {"H": {0: 12, 1: 11, 2: 13}}),
               _result("c", {"H": {0: 10, 1: 10, 2: 10}}), _result("d", {"H": {0: 9, 1: 11, 2: 12}})]
    x, y = reproduce_tables.check_claims(results, claims)
    assert [p.verdict for p in x.pairs] == ["holds", "weak"] and x.verdict == "weak"
    assert x.pairs[0].diffs == {0: 2, 1: 1, 2: 3} and x.pairs[0].with_paper_sign == 3
    assert y.verdict == "holds"
    text = reproduce_tables.render_claims([x, y], "synthetic", 3)
    assert "| x raises H | b vs a | H | +1.0 | +2.0 ± 1.0 | 3/3 | holds |" in text
    assert reproduce_tables.VERDICT_RULE in text and "- x raises H: WEAK" in text
    (record, *_) = reproduce_tables.claims_records([x])
    assert record["paper_delta"] == 1.0 and record["diff_mean"] == 2.0 and record["verdict"] == "holds"


def test_figures_write_png(tmp_path):
    from harness.plots import Series, plot_attributes, plot_lambda

    a = plot_attributes([Series("with", [5, 10, 20], [10, 20, 30], [1, 1, 1]),
                         Series("without", [5, 10, 20], [8, 15, 25], [0, 0, 0], dashed=True)],
                        tmp_path / "a.png", "left")
    b = plot_lambda([Series("H", [0.0, 0.1, 1.0], [1, 2, 3], [0, 0, 0])], tmp_path / "b.png", "right")
    for path in (a, b):
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--help"], ["table4", "--help"], ["fig4", "--help"]])
def test_help_imports_neither_ray_nor_torch(argv):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness.reproduce", *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"ray", "torch", "matplotlib"}


def test_several_missing_caches_are_named_in_one_line(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code = reproduce.run(["table2", "--dataset", "cub,sun,awa2", "--data-root", str(empty), "--cache-dir", str(empty),
                          "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    for name in ("cub", "sun", "awa2"):
        assert f"--dataset {name}" in err or f"{name}," in err or f"({name}" in err or f" {name}" in err
    assert "python -m harness.features extract" in err and "synthetic" in err
    assert not db.exists()


def test_fig4_sweeps_shares_of_the_attributes_and_three_series():
    from harness.reproduce import fig4

    assert fig4.default_k_grid(336) == [17, 34, 67, 101, 168, 252, 336]  # the stand-in: the paper's shares
    assert 300 in fig4.default_k_grid(1000)  # DeepFashion: the paper's 300 of 1,000
    spec = fig4.Fig4Spec("synthetic", 48, [12, 48], [0.1], reproduce_tables.base_config("dazle", "synthetic", {}),
                         None)
    switches = {(p.variant, p.config.dense_attention, p.config.attribute_attention) for p in spec.points()
                if p.sweep == "attributes"}
    assert switches == {("DAZLE", True, True), ("without attention over attributes", True, False),
                        ("attention over attributes on mean features", False, True)}


def _fig4_records(lambdas: dict[float, tuple[float, float]], dazle: dict[float, float], mean_aa: dict[float, float],
                  no_aa: dict[float, float]) -> list[dict]:
    recs = [{"sweep": "lambda", "series": "all attributes", "setting": "paper", "x": x, "acc_s_mean": 50.0,
             "acc_u_mean": u, "H_mean": h} for x, (u, h) in lambdas.items()]
    for series, points in (("DAZLE", dazle), ("attention over attributes on mean features", mean_aa),
                           ("without attention over attributes", no_aa)):
        recs += [{"sweep": "attributes", "series": series, "setting": "paper", "x": x, "acc_s_mean": 50.0,
                  "acc_u_mean": 50.0, "H_mean": h} for x, h in points.items()]
    return recs


def test_fig4_statements_follow_their_printed_rules():
    from harness.reproduce import fig4

    holds = _fig4_records({0.001: (2.0, 5.0), 0.1: (40.0, 30.0), 0.5: (60.0, 25.0), 1.0: (61.0, 20.0)},
                          {10.0: 20.0, 30.0: 29.0, 100.0: 30.0}, {10.0: 10.0, 30.0: 20.0, 100.0: 25.0},
                          {100.0: 28.0})
    assert [s.verdict for s in fig4.check_statements(holds)] == ["holds"] * 5
    fails = _fig4_records({0.001: (8.0, 5.0), 0.1: (40.0, 20.0), 0.5: (50.0, 25.0), 1.0: (61.0, 30.0)},
                          {10.0: 20.0, 30.0: 25.0, 100.0: 30.0}, {10.0: 18.0, 30.0: 20.0, 100.0: 28.0},
                          {100.0: 31.0})
    assert [s.verdict for s in fig4.check_statements(fails)] == ["fails"] * 5
    text = fig4.render_statements(fig4.check_statements(fails), "synthetic", 1)
    assert "H is best for lambda in [0.1, 0.3] | holds when the lambda with the highest mean H" in text
