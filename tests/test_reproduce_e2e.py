"""The reproduce commands end to end on synthetic stand-ins, with a real local Ray and a real
MLflow SQLite store: table2 (with a tuned configuration beside the paper's), table4 and fig4, at
tiny sizes (1 epoch, 1-2 seeds, few grid points). One Ray for the module: the commands reuse
an initialised Ray and leave it running."""

from __future__ import annotations

import json

import pytest

from harness.reproduce import __main__ as reproduce

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, parent_id: str):
    client = _client(uri)
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=500)
    return parent, children


def _run(argv: list[str], capsys) -> tuple[int, str, dict]:
    code = reproduce.run([*argv, "--no-progress", "--json"])
    out = capsys.readouterr().out
    return code, out, json.loads(out.strip().splitlines()[-1])


def test_table2_on_a_stand_in_with_a_tuned_configuration(local_ray, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tuned = tmp_path / "best_config.json"
    tuned.write_text(json.dumps({"model": "dazle", "dataset": "synthetic", "lambda": 0.5, "lr": 1e-3}))
    code, out, payload = _run(["table2", "--dataset", "cub=synthetic", "--seeds", "1", "--epochs", "1",
                               "--tuned", str(tuned), "--tracking-uri", uri, "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    assert "| CUB (stand-in: synthetic) | ESZSL | 63.8 |" in out
    assert "H tuned" in out
    rows = {r["row"]: r for r in payload["rows"] if r["run_here"]}
    assert set(rows) == {"cub/eszsl", "cub/devise", "cub/dazle-seen-ce", "cub/dazle"}
    assert "| CUB (stand-in: synthetic) | CADA-VAE | 53.5 | not run here |" in out
    for r in rows.values():
        assert 0 <= r["H_ours_mean"] <= 100 and r["H_ours_n"] == 1
    assert rows["cub/eszsl"]["H_paper"] == 21.0
    assert rows["cub/eszsl"]["H_diff"] is None and not rows["cub/eszsl"]["comparable"]  # a stand-in
    assert rows["cub/dazle"]["H_tuned_n"] == 1 and rows["cub/eszsl"]["H_tuned_n"] == 0  # no tuned ESZSL given
    parent, children = _runs(uri, payload["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in _client(uri).list_artifacts(parent.info.run_id)} >= {"table2.csv", "table2.md"}
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    params = [c.data.params for c in children]
    assert sorted(p["model"] for p in params) == ["dazle", "dazle", "dazle", "dazle", "devise", "eszsl"]
    assert all(p["stage"] == "final" for p in params)
    assert sorted(p["lambda"] for p in params if p["model"] == "dazle") == ["0.1", "0.1", "0.5", "0.5"]
    assert all("test_H" in c.data.metrics for c in children)
    assert (tmp_path / "out" / "table2.md").read_text().startswith("### Table 2")


def test_table4_tiny_runs_seven_configurations_per_seed(local_ray, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, payload = _run(["table4", "--dataset", "synthetic", "--seeds", "2", "--epochs", "1",
                               "--tracking-uri", uri], capsys)
    assert code == 0
    assert "Claims of the paper's Table 4, checked on synthetic" in out
    assert len(payload["rows"]) == 7 and all(r["H_ours_n"] == 2 for r in payload["rows"])
    assert {c["claim"] for c in payload["claims"]} == {
        "self-calibration raises acc_u and H", "dense attention vs mean features", "attention over attributes raises H",
        "fixed v_a lowers H"}
    assert [c["paper_delta"] for c in payload["claims"]][:4] == [1.4, 1.4, 1.3, -1.9]
    assert payload["rows"][6]["H_paper"] == 27.5
    assert all(c["seeds"] == 2 for c in payload["claims"])
    parent, children = _runs(uri, payload["parent_run_id"])
    assert len(children) == 14
    combos = {(c.data.params["dense_attention"], c.data.params["self_calibration"],
               c.data.params["attribute_attention"], c.data.params["trainable_semantics"], c.data.params["seed"])
              for c in children}
    assert len(combos) == 14
    assert ("True", "True", "True", "False", "1") in combos  # row 6, fixed v_a
    assert {a.path for a in _client(uri).list_artifacts(parent.info.run_id)} >= {"table4.csv", "table4.md"}


def test_fig4_draws_both_plots_and_logs_them(local_ray, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, payload = _run(["fig4", "--dataset", "synthetic", "--seeds", "1", "--epochs", "1",
                               "--k-grid", "6,48", "--lambda-grid", "0,1", "--tracking-uri", uri,
                               "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    points = payload["points"]
    assert {(p["sweep"], p["series"], p["x"]) for p in points} == {
        ("attributes", s, 100.0 * k / 48) for s in ("DAZLE", "without attention over attributes",
                                                   "attention over attributes on mean features")
        for k in (6, 48)} | {("lambda", "all attributes", lam) for lam in (0.0, 1.0)}
    assert len(payload["statements"]) == 5 and "| the paper says | rule | ours | verdict |" in out
    assert {s["verdict"] for s in payload["statements"]} <= {"holds", "fails", "n/a"}
    assert all(p["H_n"] == 1 and p["failures"] == 0 for p in points)
    for name in ("fig4_attributes.png", "fig4_lambda.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    parent, children = _runs(uri, payload["parent_run_id"])
    assert {a.path for a in _client(uri).list_artifacts(parent.info.run_id)} >= {
        "fig4_attributes.png", "fig4_lambda.png", "fig4.csv"}
    assert len(children) == 8
    assert {c.data.params["num_attributes"] for c in children} == {"6", "default"}


def test_protocol_reports_the_selection_gap_with_a_child_per_fit(local_ray, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tuned = tmp_path / "best_config.json"
    tuned.write_text(json.dumps({"model": "dazle", "dataset": "synthetic-tiny", "lambda": 0.5}))
    code, out, payload = _run(["protocol", "--dataset", "synthetic-tiny", "--seeds", "2", "--epochs", "2",
                               "--tuned", str(tuned), "--tracking-uri", uri, "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    rows = {r["reading"]: r for r in payload["rows"]}
    assert set(rows) == {"sealed", "authors", "authors-shift", "tuned"}
    assert all(rows[r]["H_n"] == 2 for r in rows)
    assert rows["authors"]["H_inflation_mean"] >= 0 and rows["authors-shift"]["H_inflation_mean"] >= 0
    assert "the last in-training evaluation equals it on 2/2 seeds" in out
    assert (tmp_path / "out" / "protocol_test_h.png").read_bytes()[:4] == b"\x89PNG"
    parent, children = _runs(uri, payload["parent_run_id"])
    assert len(children) == 4  # 2 seeds of the paper's settings + 2 of the tuned configuration
    history = _client(uri).get_metric_history(
        next(c for c in children if c.data.tags["reproduce.setting"] == "paper").info.run_id, "diagnostic_test_H")
    assert [m.step for m in history] == sorted(m.step for m in history) and len(history) == 2
    assert {a.path for a in _client(uri).list_artifacts(parent.info.run_id)} >= {"protocol.md", "protocol_test_h.png"}
