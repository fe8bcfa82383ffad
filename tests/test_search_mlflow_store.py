"""A small search read back from its MLflow store, as MLflow's UI shows it (issue 15).

One `python -m harness.search --model all` on the tiny synthetic dataset (a subprocess, as a user
runs it), then the store through MlflowClient: the experiment is tagged as model training, runs
are named trial-NNN / trial-000-paper / final-seedN under a parent named with model, dataset and
the smoke-test mark, the parent carries the best configuration as params and the search's metrics,
ESZSL runs carry only parameters ESZSL uses, values are rounded for reading, nothing constant or
an index is logged as a metric; and `reproduce --tuned` still reads the exact configuration.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"dataset", "model", "stage", "seed", "epochs", "batch_size"}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "harness.search", "--dataset", "synthetic-tiny", "--model", "all", "--smoke-test",
           "--num-samples", "3", "--epochs", "2", "--max-concurrent", "2", "--storage", str(tmp / "s"), "--json"]
    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    from mlflow.tracking import MlflowClient

    return summary, MlflowClient(summary["tracking_uri"]), out


def _runs(client, exp_id):
    return client.search_runs([exp_id], max_results=1000)


def test_experiment_opens_as_model_training_and_is_named_for_its_purpose(search):
    summary, client, _ = search
    exp = client.get_experiment_by_name("search/synthetic-tiny")
    assert exp is not None
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"


def test_run_names_say_what_each_run_is(search):
    summary, client, _ = search
    exp = client.get_experiment_by_name("search/synthetic-tiny")
    runs = _runs(client, exp.experiment_id)
    parents = {r.info.run_name: r for r in runs if r.data.tags.get("kind") == "search"}
    assert set(parents) == {f"{m} synthetic-tiny smoke-test" for m in ("dazle", "eszsl", "devise")}
    for parent in parents.values():
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        trials = sorted(r.info.run_name for r in children if r.data.tags.get("kind") == "trial")
        finals = [r.info.run_name for r in children if r.data.tags.get("kind") == "final"]
        assert trials == ["trial-000-paper", "trial-001", "trial-002"], trials
        assert finals == ["final-seed0"]


def test_parent_logs_the_best_configuration_and_the_search_metrics(search):
    summary, client, _ = search
    for model, s in summary["models"].items():
        parent = client.get_run(s["parent_run_id"])
        params, metrics = parent.data.params, parent.data.metrics
        for key, value in s["best_config"].items():
            name = "lambda" if key == "lam" else key
            assert params[f"best.{name}"] == (f"{value:.4g}" if isinstance(value, float) else str(value)), model
        assert {"best_val_H", "paper_config_val_H", "test_H_mean", "test_H_std"} <= set(metrics), model
        assert params["epochs"] == "2" and params["stage"] == "search"
        assert "lam" not in json.loads(params["search_space"]) or model != "dazle"
        assert s["importance"]["status"] == "too few trials"


def test_each_run_logs_only_the_params_its_model_uses_rounded(search):
    summary, client, _ = search
    exp = client.get_experiment_by_name("search/synthetic-tiny")
    children = [r for r in _runs(client, exp.experiment_id) if r.data.tags.get("kind") in ("trial", "final")]
    eszsl = [r for r in children if r.data.params["model"] == "eszsl"]
    assert eszsl
    for run in eszsl:
        assert set(run.data.params) == COMMON | {"eszsl_gamma", "eszsl_lambda"}, run.data.params
        assert run.data.params["epochs"] == "1"  # the closed form's one pass, not --epochs
    for run in children:
        assert COMMON <= set(run.data.params)
        for name, value in run.data.params.items():
            if re.fullmatch(r"-?[0-9.]+(e[-+]?\d+)?", value) and not value.isdigit():
                assert value == f"{float(value):.4g}", (name, value)
        if run.data.params["model"] == "dazle":
            assert "lambda" in run.data.params and "eszsl_gamma" not in run.data.params


def test_no_index_or_constant_metrics(search):
    summary, client, _ = search
    exp = client.get_experiment_by_name("search/synthetic-tiny")
    for run in _runs(client, exp.experiment_id):
        assert not {"epoch", "iteration", "attention_chance"} & set(run.data.metrics), (run.info.run_name,
                                                                                        sorted(run.data.metrics))


def test_reproduce_tuned_reads_the_exact_configuration(search):
    from harness.reproduce.tuned import load_tuned, pick

    summary, client, _ = search
    for source in (summary["storage"], summary["models"]["dazle"]["parent_run_id"]):
        tuned = pick(load_tuned(source, summary["tracking_uri"]), "dazle", "synthetic-tiny")
        assert tuned is not None, source
        best = summary["models"]["dazle"]["best_config"]
        for key, value in best.items():
            got = tuned.values["lam" if key == "lambda" else key]
            assert got == value and (not isinstance(value, float) or math.isclose(got, value, rel_tol=0)), (key, got)


def test_final_seeds_report_progress(search):
    _, _, out = search
    assert re.search(r"final seed 0 \(1/1\):\s+test H \d\.\d{4}", out.stderr), out.stderr[-2000:]
