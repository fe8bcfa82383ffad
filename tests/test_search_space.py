"""Search spaces -> Optuna, the paper configuration first, the searcher's state across a restore,
and the scheduler that never stops the paper configuration early."""

from __future__ import annotations

import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from harness.config import TrainConfig
from harness.errors import InputError
from harness.search.space import check_space, resolve_space, same_point, trial_config


def test_dazle_space_resolves_all_attributes_and_paper_defaults():
    space = resolve_space("dazle", num_attributes=48)
    dists = space.distributions()
    assert dists["lam"] == FloatDistribution(0.01, 1.0, log=True)
    assert dists["lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert dists["num_attributes"] == IntDistribution(1, 48)
    assert space.defaults == {"lam": 0.1, "num_attributes": 48, "lr": 1e-4}
    assert space.contains(space.defaults)


def test_attribute_bound_is_clipped_to_the_dataset():
    space = resolve_space("dazle", num_attributes=5)
    assert space.params["num_attributes"]["high"] == 5
    assert space.defaults["num_attributes"] == 5


def test_trial_config_overrides_the_search_base():
    base = {"dataset": "synthetic", "model": "dazle", "stage": "search", "epochs": 3, "num_threads": 1}
    config = trial_config(base, {"lam": 0.5, "num_attributes": 12, "lr": 3e-4})
    assert isinstance(config, TrainConfig)
    assert (config.lam, config.num_attributes, config.lr, config.stage, config.epochs) == (0.5, 12, 3e-4, "search", 3)
    assert config.as_params()["lambda"] == 0.5
    with pytest.raises(InputError, match="unknown configuration key"):
        trial_config(base, {"not_a_field": 1})


@pytest.mark.parametrize(
    "space, match",
    [
        ({"lr": {"type": "loguniform", "low": 0.0, "high": 1.0}}, "low > 0"),
        ({"lr": {"type": "uniform", "low": 2.0, "high": 1.0}}, "below high"),
        ({"lr": {"type": "gaussian", "low": 1, "high": 2}}, "type"),
        ({"nonsense": {"type": "uniform", "low": 0, "high": 1}}, "not a TrainConfig field"),
        ({"dense_attention": {"type": "categorical", "choices": []}}, "choices"),
        ({"lr": {"type": "uniform", "low": -0.01, "high": -0.001}}, "positive"),
        ({"num_attributes": {"type": "int", "low": 0, "high": 5}}, "k >= 1"),
    ],
)
def test_malformed_spaces_name_the_entry(space, match):
    with pytest.raises(InputError, match=match):
        check_space("m", space, {})


def test_same_point_tolerates_float_noise_only():
    assert same_point({"lr": 1e-4, "k": 3}, {"lr": 1e-4 * (1 + 1e-12), "k": 3})
    assert not same_point({"lr": 1e-4, "k": 3}, {"lr": 1.1e-4, "k": 3})
    assert not same_point({"lr": 1e-4}, {"lr": 1e-4, "k": 3})


def _searcher(space, seed=0):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(space=space.distributions(), metric="val_H", mode="max",
                        points_to_evaluate=[dict(space.defaults)],
                        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3))


def test_optuna_search_starts_with_paper_config_and_keeps_history_across_restore(tmp_path):
    """The searcher a resumed search restores keeps its trials (cf. ray #30861) and goes on
    exactly where the uninterrupted one would have, instead of restarting from the defaults."""
    space = resolve_space("dazle", num_attributes=48)
    first = _searcher(space)
    suggestions = [first.suggest(f"t{i}") for i in range(5)]
    assert same_point(suggestions[0], space.defaults)
    for i, point in enumerate(suggestions):
        first.on_trial_complete(f"t{i}", {"val_H": point["lr"] * 100, "training_iteration": 1})
    path = tmp_path / "searcher.pkl"
    first.save(str(path))
    expected_next = first.suggest("t5")

    restored = _searcher(space)  # what Tuner.restore rebuilds, then fills from the saved state
    restored.restore(str(path))
    assert len(restored._ot_study.trials) == 5
    following = restored.suggest("t5")
    assert same_point(following, expected_next)
    assert not any(same_point(following, s) for s in suggestions)


def test_paper_configuration_is_never_stopped_early():
    from ray.tune.experiment import Trial

    from harness.search.tune import PaperFirstASHA

    paper = {"lam": 0.1, "num_attributes": 48, "lr": 1e-4}
    scheduler = PaperFirstASHA(paper, time_attr="training_iteration", metric="val_H", mode="max", max_t=10,
                               grace_period=1, reduction_factor=2, stop_last_trials=False)
    strong = [Trial("__fake", config={**paper, "lr": 1e-3 * (i + 1)}, stub=True) for i in range(3)]
    paper_trial = Trial("__fake", config=dict(paper), stub=True)
    weak = Trial("__fake", config={**paper, "lr": 2e-5}, stub=True)
    for trial in [*strong, paper_trial, weak]:
        scheduler.on_trial_add(None, trial)
    for trial in strong:
        assert scheduler.on_trial_result(None, trial, {"training_iteration": 1, "val_H": 0.9}) == "CONTINUE"
    assert scheduler.on_trial_result(None, weak, {"training_iteration": 1, "val_H": 0.0}) == "STOP"
    assert scheduler.on_trial_result(None, paper_trial, {"training_iteration": 1, "val_H": 0.0}) == "CONTINUE"


@pytest.mark.parametrize("max_t", [1, 2, 3, 5, 10, 20, 27, 100])
def test_trials_report_exactly_at_the_passes_where_asha_decides(max_t):
    """Trials report to Tune only at ASHA's rungs (and their last pass): the rungs must be Ray's own."""
    from ray.tune.schedulers import ASHAScheduler

    from harness.search.tune import grace_period, rung_passes

    grace = grace_period(max_t)
    asha = ASHAScheduler(time_attr="pass", metric="val_H", mode="max", max_t=max_t, grace_period=grace,
                         reduction_factor=3)
    assert rung_passes(max_t, grace, 3) == tuple(sorted(milestone for milestone, _ in asha._brackets[0]._rungs))
    assert all(1 <= p <= max_t for p in rung_passes(max_t, grace, 3))
