"""Fast checks of what makes a search read well (issue 15): names, params, notes, importance, errors."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest

from harness import tracking
from harness.config import TrainConfig
from harness.errors import InputError


def test_params_are_rounded_to_four_significant_digits():
    assert tracking.format_param(1.3265792738507128e-05) == "1.327e-05"
    assert tracking.format_param(0.07501954443620121) == "0.07502"
    assert tracking.format_param(0.1) == "0.1"
    assert tracking.format_param(48) == "48" and tracking.format_param(True) == "True"


def test_runs_log_the_common_params_and_only_those_their_model_uses():
    from harness.methods import run_params

    eszsl = run_params(TrainConfig(model="eszsl", stage="search", epochs=20), 20)
    assert set(eszsl) == {"dataset", "model", "stage", "seed", "epochs", "batch_size", "eszsl_gamma", "eszsl_lambda"}
    assert eszsl["epochs"] == 1  # the closed form's one pass, whatever --epochs says
    dazle = run_params(TrainConfig(model="dazle", num_attributes=None), 20, ("lam", "num_attributes", "lr"))
    assert dazle["epochs"] == 20 and dazle["lambda"] == 0.1 and dazle["num_attributes"] == "all"
    assert "lam" not in dazle and "eszsl_gamma" not in dazle and "margin" not in dazle
    devise = run_params(TrainConfig(model="devise"), 20)
    assert {"lr", "margin"} <= set(devise) and "lambda" not in devise


def test_trial_names_follow_the_searchers_order_and_mark_the_paper_configuration():
    from harness.search.trial import trial_run_name
    from harness.search.tune import trial_name

    assert trial_name(SimpleNamespace(experiment_tag="1_lam=0.1,lr=0.0001", trial_id="ab12cd34")) == "trial-000"
    assert trial_name(SimpleNamespace(experiment_tag="8_lam=0.3", trial_id="ab12cd34")) == "trial-007"
    assert trial_name(SimpleNamespace(experiment_tag="", trial_id="ab12cd34")) == "trial-ab12cd34"
    assert trial_run_name("trial-000", "ab12cd34", paper=True) == "trial-000-paper"
    assert trial_run_name("trial-012", "ab12cd34", paper=False) == "trial-012"
    assert trial_run_name("run_trial_ab12cd34", "ab12cd34", paper=False) == "trial-ab12cd34"  # an old search's trial


def test_a_stopped_trial_says_where_and_why():
    from harness.search.tune import stopped_note

    note = stopped_note(4, 20, (4, 12), 1, "val_ausuc", 0.0053)
    assert "epoch 4 of 20" in note and "rung 1 of 2" in note and "val_ausuc 0.0053" in note
    note = stopped_note(8, 40, (8, 24), 2, "val_H", None)
    assert "pass 8 (epoch 4 of 20)" in note


def test_parent_name_says_model_dataset_and_time_or_smoke_test():
    from harness.search.driver import parent_run_name
    from harness.search.settings import SearchSettings

    assert parent_run_name("eszsl", SearchSettings(dataset="cub", smoke_test=True)) == "eszsl cub smoke-test"
    name = parent_run_name("dazle", SearchSettings(dataset="synthetic"))
    assert name.startswith("dazle synthetic ") and len(name) <= 24


def test_experiment_defaults_to_one_per_purpose():
    from harness.search.__main__ import get_args_parser
    from harness.search.settings import settings_from_args

    args = get_args_parser().parse_args(["--dataset", "synthetic-tiny"])
    assert settings_from_args(args).experiment == "search/synthetic-tiny"
    args = get_args_parser().parse_args(["--dataset", "synthetic-tiny", "--experiment", "mine"])
    assert settings_from_args(args).experiment == "mine"
    for option in ("--searcher", "--scheduler"):
        with pytest.raises(SystemExit):
            get_args_parser().parse_args([option, "bogus"])


def test_experiments_are_tagged_as_model_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking._client(uri)
    old = client.create_experiment("untagged")  # made before the tag existed
    assert tracking.experiment_id(uri, "untagged") == old
    for name in ("untagged", "search/x"):
        exp = client.get_experiment(tracking.experiment_id(uri, name))
        assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert "workflowType=machine_learning" in tracking.ui_command(uri, "1")


def _points(n, seed=0):
    from optuna.distributions import FloatDistribution, IntDistribution

    rng = np.random.default_rng(seed)
    dists = {"lr": FloatDistribution(1e-5, 1e-3, log=True), "lam": FloatDistribution(0.01, 1, log=True),
             "num_attributes": IntDistribution(1, 48)}
    points = []
    for _ in range(n):
        p = {"lr": float(10 ** rng.uniform(-5, -3)), "lam": float(10 ** rng.uniform(-2, 0)),
             "num_attributes": int(rng.integers(1, 49))}
        points.append((p, -abs(math.log10(p["lr"]) + 4)))  # only lr matters
    return points, dists


def test_importance_ranks_the_parameter_that_matters_with_a_spread():
    from harness.search.insight import importance, importance_line

    points, dists = _points(20)
    result = importance(points, dists, at_pass=4, resamples=10)
    assert result["status"] == "ok" and next(iter(result["params"])) == "lr"
    assert abs(sum(v["mean"] for v in result["params"].values()) - 1) < 1e-6
    assert all(v["std"] >= 0 for v in result["params"].values())
    line = importance_line(result)
    assert line.startswith("importance: lr 0.") and "+-" in line and ", lambda " in line and ", k " in line


def test_importance_says_too_few_trials_or_no_spread_instead_of_numbers():
    from harness.search.insight import MIN_TRIALS, importance, importance_line

    points, dists = _points(MIN_TRIALS - 1)
    few = importance(points, dists)
    assert few["status"] == "too few trials" and "params" not in few
    assert importance_line(few) == f"importance: too few trials ({MIN_TRIALS - 1} < {MIN_TRIALS}) to rank hyperparameters"
    points, dists = _points(12)
    flat = importance([(p, 0.0) for p, _ in points], dists, at_pass=1)
    assert flat["status"] == "no spread" and "same val_H at pass 1" in importance_line(flat)


def test_common_pass_is_the_latest_report_every_trial_reached():
    from harness.search.insight import common_pass

    assert common_pass([{4: 0.1, 12: 0.3, 20: 0.5}, {4: 0.0}, {4: 0.2, 12: 0.1}]) == 4
    assert common_pass([{20: 0.5}, {20: 0.4}]) == 20
    assert common_pass([{4: 0.1}, {}]) is None


def test_pareto_front():
    from harness.search.insight import pareto_front

    seen, unseen = [0.9, 0.5, 0.6, 0.2, 0.6], [0.1, 0.5, 0.4, 0.6, 0.5]
    assert pareto_front(seen, unseen) == [3, 4, 0]


def test_final_seed_progress_line():
    from harness.search.final import final_line

    line = final_line({"seed": 1, "test_H": 0.622, "test_acc_seen": 0.599, "test_acc_unseen": 0.647,
                       "seconds": 21.9}, 2, 3)
    assert line == "final seed 1 (2/3):  test H 0.6220  acc_s 0.5990  acc_u 0.6470  in 21.9 s"
    assert "reused" in final_line({"seed": 0, "reused": True}, 1, 1)


@pytest.mark.parametrize("options, names", [
    ({}, ["--data-root not given", "--word-vectors not given"]),
    ({"data_root": "/no/such/dir", "word_vectors": "/no/such.txt"}, ["--data-root /no/such/dir", "--word-vectors /no/such.txt"]),
])
def test_missing_real_data_names_every_input_the_command_and_the_stand_in(options, names):
    from harness.data.registry import load_or_explain

    with pytest.raises(InputError) as err:
        load_or_explain("deepfashion", **options)
    line = str(err.value)
    assert "\n" not in line
    for name in names:
        assert name in line
    assert "python -m harness.features extract --dataset deepfashion" in line
    assert "--dataset synthetic-deepfashion" in line


def test_search_cli_names_the_missing_inputs_before_ray_starts(tmp_path, monkeypatch):
    from harness.search.__main__ import get_args_parser, main

    monkeypatch.chdir(tmp_path)
    args = get_args_parser().parse_args(["--dataset", "cub", "--storage", str(tmp_path / "s")])
    with pytest.raises(InputError) as err:
        main(args)
    assert "prepare it with `python -m harness.features extract --dataset cub" in str(err.value)
    assert not (tmp_path / "s").exists()
    assert isinstance(args, argparse.Namespace)
