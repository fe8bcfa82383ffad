"""Every registered method, through the trainer's interface, on tiny CPU inputs.

Parametrised over `list_methods()`: a method added under harness/methods/ is tested here by
registering it (forward shapes, a training step or a closed-form solve, a finite loss, the
prediction margin's shape, and a whole fit through the trainer)."""

from __future__ import annotations

import math

import pytest
import torch

import search_spaces
from harness.config import TrainConfig
from harness.methods import MethodSpec, build_method, indexed_methods, list_methods
from harness.trainer import fit

NUM_CLASSES, NUM_ATTRIBUTES, WORD_DIM, FEATURE_DIM, REGIONS, BATCH = 7, 6, 5, 8, 4, 10
SEEN, UNSEEN = torch.arange(0, 5), torch.arange(5, 7)


def tiny_spec() -> MethodSpec:
    gen = torch.Generator().manual_seed(0)
    return MethodSpec(
        class_semantics=torch.rand(NUM_CLASSES, NUM_ATTRIBUTES, generator=gen),
        attribute_semantics=torch.randn(NUM_ATTRIBUTES, WORD_DIM, generator=gen),
        seen_classes=SEEN, unseen_classes=UNSEEN, feature_dim=FEATURE_DIM, num_regions=REGIONS,
    )


def tiny_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(BATCH, FEATURE_DIM, REGIONS, generator=gen)
    labels = SEEN[torch.randint(len(SEEN), (BATCH,), generator=gen)]
    return features, labels


def method_config(model: str) -> TrainConfig:
    return TrainConfig(model=model, **search_spaces.load(model).config_defaults()).validate()


def test_the_help_index_names_exactly_the_registered_methods():
    assert indexed_methods() == list_methods()


@pytest.mark.parametrize("model", list_methods())
def test_training_step_and_scores(model):
    torch.manual_seed(0)
    method = build_method(model, tiny_spec(), method_config(model), torch.device("cpu"))
    assert isinstance(method.module, torch.nn.Module)
    for seed in (1, 2):
        out = method.train_step(*tiny_batch(seed))
        assert math.isfinite(out["loss"]), out
    method.end_epoch()  # a closed-form method solves here
    scores = method.scores(tiny_batch(3)[0])
    assert scores.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(scores).all()
    margin = method.prediction_margin()
    assert margin is None or margin.shape == (NUM_CLASSES,)


@pytest.mark.parametrize("model", list_methods())
def test_training_changes_the_scores(model):
    torch.manual_seed(0)
    method = build_method(model, tiny_spec(), method_config(model), torch.device("cpu"))
    probe = tiny_batch(9)[0]
    before = method.scores(probe).clone()
    for seed in range(1, 6):
        method.train_step(*tiny_batch(seed))
    method.end_epoch()
    assert not torch.allclose(method.scores(probe), before), "training left the scores unchanged"


@pytest.mark.parametrize("model", list_methods())
def test_a_whole_search_stage_fit_through_the_trainer(model):
    config = TrainConfig(dataset="synthetic", model=model, stage="search", epochs=1,
                         **search_spaces.load(model).config_defaults())
    result = fit(config)
    assert math.isfinite(result.metrics["loss"])
    assert 0.0 <= result.metrics["val_H"] <= 1.0
    assert result.history and result.history[-1]["epoch"] == 1


@pytest.mark.parametrize("model", list_methods())
def test_save_and_load_state_continue_exactly(model, tmp_path):
    """A method's state, saved to disk and loaded into a fresh instance (weights_only), gives the same
    scores and the same next step as the original: what a checkpoint mid-run needs."""
    torch.manual_seed(0)
    original = build_method(model, tiny_spec(), method_config(model), torch.device("cpu"))
    for seed in (1, 2):
        original.train_step(*tiny_batch(seed))
    torch.save(original.save_state(), tmp_path / "state.pt")

    torch.manual_seed(123)  # a fresh instance, initialised differently
    restored = build_method(model, tiny_spec(), method_config(model), torch.device("cpu"))
    restored.load_state(torch.load(tmp_path / "state.pt", weights_only=True))

    probe = tiny_batch(9)[0]
    assert torch.equal(original.scores(probe), restored.scores(probe))
    # The next step (a gradient step, or one more batch in a closed form's sums) and the epoch's end.
    assert original.train_step(*tiny_batch(3)) == restored.train_step(*tiny_batch(3))
    original.end_epoch()
    restored.end_epoch()
    assert torch.equal(original.scores(probe), restored.scores(probe))
    for a, b in zip(original.module.state_dict().values(), restored.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
