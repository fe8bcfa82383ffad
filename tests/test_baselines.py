"""ESZSL and DeViSE: the closed form is the minimiser, streaming equals batch, the hinge rank loss
is zero exactly when the margins hold, training lowers it, and both run through the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import search_spaces
from baselines.devise import DeViSE, hinge_rank_loss
from baselines.eszsl import ESZSL, eszsl_closed_form, eszsl_objective, holistic_features
from harness.config import TrainConfig
from harness.methods import list_methods, method_hyperparameters
from harness.search.space import check_space
from harness.trainer import SequentialPass, fit, predict_scores


def _problem(seed: int = 0, f: int = 6, n: int = 40, a: int = 4, cs: int = 5):
    """A small ESZSL problem in float64: X [F, N], Y [N, Cs] in {-1, 1}, S [A, Cs], labels [N]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(f, n, generator=g, dtype=torch.float64)
    labels = torch.randint(0, cs, (n,), generator=g)
    y = -torch.ones(n, cs, dtype=torch.float64)
    y[torch.arange(n), labels] = 1.0
    s = F.normalize(torch.rand(a, cs, generator=g, dtype=torch.float64), dim=0)
    return x, y, s, labels


# ---------------------------------------------------------------- ESZSL


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (1e-2, 10.0), (30.0, 1e-3)])
def test_eszsl_closed_form_is_where_the_gradient_vanishes(gamma, lam):
    x, y, s, _ = _problem()
    v = eszsl_closed_form(x, y, s, gamma, lam).requires_grad_(True)
    (grad,) = torch.autograd.grad(eszsl_objective(x, y, s, v, gamma, lam), v)
    # Compare with the gradient's size at a nearby point, so the test cannot pass by scale alone.
    v_off = (v.detach() + 0.1 * torch.randn_like(v)).requires_grad_(True)
    (grad_off,) = torch.autograd.grad(eszsl_objective(x, y, s, v_off, gamma, lam), v_off)
    assert grad.abs().max() < 1e-9 * grad_off.abs().max()
    # And it is the minimum: the objective is larger anywhere around it.
    for _ in range(5):
        assert eszsl_objective(x, y, s, v_off.detach(), gamma, lam) > eszsl_objective(x, y, s, v.detach(), gamma, lam)


def test_eszsl_closed_form_matches_a_direct_least_squares_solve():
    """The objective is ||A vec(V) - b||^2 with A stacking the four Kronecker blocks; lstsq solves it."""
    gamma, lam = 0.5, 2.0
    x, y, s, _ = (t.numpy() if isinstance(t, torch.Tensor) else t for t in _problem(seed=3))
    f, a = x.shape[0], s.shape[0]
    # Column-major vec: vec(P V Q) = (Q^T kron P) vec(V).
    blocks = [
        (np.kron(s.T, x.T), y.reshape(-1, order="F")),  # X^T V S - Y
        (np.sqrt(gamma) * np.kron(s.T, np.eye(f)), np.zeros(f * s.shape[1])),  # V S
        (np.sqrt(lam) * np.kron(np.eye(a), x.T), np.zeros(x.shape[1] * a)),  # X^T V
        (np.sqrt(gamma * lam) * np.eye(f * a), np.zeros(f * a)),  # V
    ]
    design = np.vstack([b[0] for b in blocks])
    target = np.concatenate([b[1] for b in blocks])
    vec_v, *_ = np.linalg.lstsq(design, target, rcond=None)
    expected = vec_v.reshape(f, a, order="F")
    got = eszsl_closed_form(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(s), gamma, lam).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("batch_size", [1, 7, 40])
def test_eszsl_streaming_statistics_equal_the_batch_solve(batch_size):
    x, y, s, labels = _problem(seed=1)
    f, n = x.shape
    unseen = F.normalize(torch.rand(2, s.shape[0], dtype=torch.float64), dim=1)  # two extra classes
    class_semantics = torch.cat([s.t(), unseen]).float()  # [C, A]: seen classes 0..4, unseen 5, 6
    model = ESZSL(class_semantics=class_semantics, seen_classes=torch.arange(5), feature_dim=f, gamma=0.3, lam=0.7)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # any batch order
    maps = x.t().float()[:, :, None].expand(n, f, 3)  # [N, F, R=3]: the mean over regions is x
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        model.accumulate(maps[idx], labels[idx])
    assert model.num_accumulated == n
    v = model.solve()
    s_used = F.normalize(class_semantics.double(), dim=1)[:5].t()  # the module normalises rows
    np.testing.assert_allclose(v.numpy(), eszsl_closed_form(x.float().double(), y, s_used, 0.3, 0.7).numpy(),
                               rtol=1e-6, atol=1e-9)
    scores = model(maps[:4])
    expected = x.t()[:4].float() @ model.V @ F.normalize(class_semantics, dim=1).t()
    assert scores.shape == (4, 7)
    torch.testing.assert_close(scores, expected)


def test_eszsl_rejects_unseen_labels_and_bad_hyperparameters():
    model = ESZSL(class_semantics=torch.rand(4, 3), seen_classes=torch.tensor([0, 2]), feature_dim=5)
    with pytest.raises(ValueError, match="unseen"):
        model.accumulate(torch.rand(2, 5, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="positive"):
        ESZSL(class_semantics=torch.rand(4, 3), seen_classes=torch.tensor([0]), feature_dim=5, gamma=0.0)


def test_holistic_features_is_the_mean_of_the_region_map():
    maps = torch.rand(3, 8, 7, 7)
    torch.testing.assert_close(holistic_features(maps), maps.flatten(2).mean(-1))
    torch.testing.assert_close(holistic_features(maps.flatten(2)), maps.flatten(2).mean(-1))
    flat = torch.rand(3, 8)
    assert holistic_features(flat[:, :, None]).equal(flat)  # imported res101.mat features, R = 1
    assert holistic_features(flat).equal(flat)
    with pytest.raises(ValueError, match="expected features"):
        holistic_features(torch.rand(8))


# ---------------------------------------------------------------- DeViSE


def _hinge_by_loops(scores: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    total = 0.0
    for i in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            if c != labels[i]:
                total += max(0.0, margin - scores[i, labels[i]].item() + scores[i, c].item())
    return total / scores.shape[0]


def test_hinge_rank_loss_is_zero_exactly_when_every_margin_holds():
    margin = 0.3
    labels = torch.tensor([0, 2, 1])
    scores = torch.zeros(3, 4, dtype=torch.float64)
    scores[torch.arange(3), labels] = margin  # every true class wins by exactly the margin
    assert hinge_rank_loss(scores, labels, margin).item() == 0.0
    broken = scores.clone()
    broken[1, 3] = 1e-3  # one class now beats class 2 - margin: that margin fails by 1e-3
    assert hinge_rank_loss(broken, labels, margin).item() == pytest.approx(1e-3 / 3)

    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        s = torch.randn(5, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 6, (5,), generator=g)
        m = float(torch.rand(1, generator=g))
        others = s.clone()
        others[torch.arange(5), y] = -torch.inf
        holds = bool((s[torch.arange(5), y] - others.max(1).values >= m).all())
        loss = hinge_rank_loss(s, y, m).item()
        assert (loss == 0.0) == holds
        assert loss == pytest.approx(_hinge_by_loops(s, y, m))


def test_devise_training_lowers_the_hinge_rank_loss(tiny_synthetic):
    config = TrainConfig(model="devise", lr=1e-2, epochs=10)
    result = fit(config, tiny_synthetic)
    view, method = result.view, result.method
    seen = torch.from_numpy(view.seen_classes)
    labels = torch.from_numpy(view.fit_labels)
    scores = torch.from_numpy(predict_scores(method, view, view.fit_indices, config))[:, seen]
    before = config.margin * (len(seen) - 1)  # M = 0: every score ties, each of the Cs-1 margins fails fully
    after = hinge_rank_loss(scores, labels, config.margin).item()
    assert after < 0.6 * before
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[0]["loss"] < before + 1e-6


def test_devise_depends_on_margin_over_lr_only(tiny_synthetic):
    """With M starting at zero, (lr, margin) and (10 lr, 10 margin) give the same predictions."""
    a = fit(TrainConfig(model="devise", lr=1e-3, margin=0.05, epochs=4), tiny_synthetic)
    b = fit(TrainConfig(model="devise", lr=1e-2, margin=0.5, epochs=4), tiny_synthetic)
    for key in ("test_zsl_top1", "test_acc_seen", "test_acc_unseen", "test_ausuc"):
        assert a.metrics[key] == pytest.approx(b.metrics[key], abs=1e-6)
    torch.testing.assert_close(10 * a.method.module.M, b.method.module.M, rtol=1e-3, atol=1e-5)


def test_devise_scores_every_class_through_the_semantics():
    z = torch.rand(5, 3)
    model = DeViSE(class_semantics=z, feature_dim=4)
    with torch.no_grad():
        model.M.copy_(torch.rand(4, 3))
    maps = torch.rand(2, 4, 9)
    x = F.normalize(maps.mean(-1), dim=1)
    torch.testing.assert_close(model(maps), x @ model.M @ F.normalize(z, dim=1).t())


# ---------------------------------------------------------------- trainer integration


def test_both_baselines_are_registered_with_their_hyperparameters():
    assert {"dazle", "eszsl", "devise"} <= set(list_methods())
    assert method_hyperparameters("eszsl") == ("eszsl_gamma", "eszsl_lambda")
    assert method_hyperparameters("devise") == ("lr", "margin")
    for model in ("eszsl", "devise"):
        space = search_spaces.load(model)
        check_space(model, space.space, space.defaults)
        assert set(space.space) == set(method_hyperparameters(model))
        TrainConfig(model=model, **space.config_defaults()).validate()


def test_sequential_pass_visits_every_image_once_in_order():
    batches = list(SequentialPass(23, 5).epoch())
    assert SequentialPass(23, 5).steps_per_epoch() == len(batches) == 5
    assert np.concatenate(batches).tolist() == list(range(23))


def test_eszsl_in_the_trainer_solves_on_every_fit_image_once(tiny_synthetic):
    result = fit(TrainConfig(model="eszsl"), tiny_synthetic)
    view, module = result.view, result.method.module
    assert module.num_accumulated == len(view.fit_indices)  # one sequential pass, no repeats
    assert len(result.history) == 1  # default_epochs = 1 whatever the dataset says
    x = torch.from_numpy(view.features.read(view.fit_indices)).double().mean(-1).t()  # [F, N]
    seen = torch.from_numpy(view.seen_classes)
    y = -torch.ones(x.shape[1], len(seen), dtype=torch.float64)
    y[torch.arange(x.shape[1]), torch.from_numpy(view.fit_labels)] = 1.0
    s = F.normalize(torch.from_numpy(view.class_attributes).double(), dim=1)[seen].t()
    expected = eszsl_closed_form(x, y, s, 1.0, 1.0)
    np.testing.assert_allclose(module.V.double().numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model, extra", [("eszsl", {}), ("devise", {"lr": 1e-2})])
def test_baselines_beat_chance_zsl_through_the_trainer(tiny_synthetic, model, extra):
    result = fit(TrainConfig(model=model, **extra), tiny_synthetic)
    chance = 1 / len(tiny_synthetic.unseen_classes)
    assert result.metrics["test_zsl_top1"] > 1.5 * chance
    assert 0.0 <= result.metrics["test_ausuc"] <= 1.0


def test_eszsl_mid_epoch_reports_use_the_images_so_far(tiny_synthetic):
    reports = []
    fit(TrainConfig(model="eszsl", stage="search", reports_per_epoch=50), tiny_synthetic, reporter=reports.append)
    assert len(reports) >= 3  # one per step
    # V is solved on the partial sums before each report: never the all-zero scores of V = 0.
    assert all(r["val_zsl_top1"] > 0 for r in reports)
    assert reports[0]["val_ausuc"] != reports[-1]["val_ausuc"]
