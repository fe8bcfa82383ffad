"""DAZLE: shapes, gradients, ablation switches (the terms each one changes), initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.dazle import DAZLE

B, FEAT, A, D, C = 4, 16, 6, 5, 7


def make(**switches) -> DAZLE:
    torch.manual_seed(0)
    model = DAZLE(
        class_semantics=torch.rand(C, A),
        attribute_semantics=torch.randn(A, D),
        seen_classes=torch.tensor([0, 1, 2, 3, 4]),
        unseen_classes=torch.tensor([5, 6]),
        feature_dim=FEAT,
        **switches,
    )
    with torch.no_grad():  # leave the zero init so attention and gates are not trivial
        model.W_alpha.normal_()
        model.W_beta.normal_()
    return model


@pytest.mark.parametrize("shape", [(B, FEAT, 49), (B, FEAT, 7, 7)])
def test_output_shapes(shape):
    out = make()(torch.rand(*shape))
    assert out.scores.shape == (B, C)
    assert out.attention.shape == (B, A, 49)
    assert out.attribute_scores.shape == (B, A)
    assert out.attribute_gates.shape == (B, A)
    assert torch.allclose(out.attention.sum(-1), torch.ones(B, A), atol=1e-5)
    assert torch.isfinite(out.scores).all()


def test_grid_and_flat_inputs_agree():
    model = make()
    x = torch.rand(B, FEAT, 7, 7)
    assert torch.allclose(model(x).scores, model(x.flatten(2)).scores)


def test_wrong_feature_dim_is_rejected():
    with pytest.raises(ValueError, match="expected features"):
        make()(torch.rand(B, FEAT + 1, 49))


def test_initialisation_as_authors():
    torch.manual_seed(0)
    w2v = torch.randn(A, D) * 3
    model = DAZLE(class_semantics=torch.rand(C, A), attribute_semantics=w2v, seen_classes=torch.arange(5),
                  unseen_classes=torch.tensor([5, 6]), feature_dim=FEAT)
    assert torch.count_nonzero(model.W_alpha) == 0 and torch.count_nonzero(model.W_beta) == 0
    assert model.W_e.std() > 0.5  # N(0, 1)
    assert torch.allclose(model.V.norm(dim=1), torch.ones(A), atol=1e-5)
    out = model(torch.rand(B, FEAT, 49))
    assert torch.allclose(out.attention, torch.full_like(out.attention, 1 / 49))  # uniform at the start
    assert torch.allclose(out.attribute_gates, torch.full_like(out.attribute_gates, 0.5))
    assert torch.allclose(model.class_semantics.norm(dim=1), torch.ones(C), atol=1e-5)
    assert model.calibration_margin.tolist() == [-1, -1, -1, -1, -1, 1, 1]


@pytest.mark.parametrize("trainable", [True, False])
def test_gradients_reach_v_only_when_trainable(trainable):
    model = make(trainable_semantics=trainable)
    model(torch.rand(B, FEAT, 49)).scores.sum().backward()
    assert (model.V.grad is not None) is trainable
    for w in (model.W_alpha, model.W_e, model.W_beta):
        assert w.grad is not None and torch.count_nonzero(w.grad) > 0


def _reference(model: DAZLE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Equations 2-7 written literally, with h materialised."""
    f = F.normalize(x.flatten(2), dim=1)  # [B, F, R]
    v = model.V
    logits = torch.einsum("ad,df,bfr->bar", v, model.W_alpha, f)
    alpha = logits.softmax(-1) if model.dense_attention else torch.full_like(logits, 1 / f.shape[-1])
    h = torch.einsum("bar,bfr->baf", alpha, f)
    e = torch.einsum("ad,df,baf->ba", v, model.W_e, h)
    beta = torch.sigmoid(torch.einsum("ad,df,baf->ba", v, model.W_beta, h))
    if not model.attribute_attention:
        beta = torch.ones_like(beta)
    s = torch.einsum("ba,ca->bc", e * beta, model.class_semantics)
    return {"alpha": alpha, "e": e, "beta": beta, "s": s}


@pytest.mark.parametrize(
    "switches",
    [{}, {"dense_attention": False}, {"attribute_attention": False}, {"trainable_semantics": False}],
)
def test_each_switch_changes_exactly_its_terms(switches):
    x = torch.rand(B, FEAT, 49)
    full, ablated = make(), make(**switches)
    ablated.load_state_dict(full.state_dict())
    a, b = full(x), ablated(x)
    ref = _reference(ablated, x)
    assert torch.allclose(b.scores, ref["s"], rtol=1e-5, atol=1e-5)
    assert torch.allclose(b.attention, ref["alpha"], atol=1e-6)
    key = next(iter(switches), None)
    if key == "dense_attention":
        assert not torch.allclose(a.attention, b.attention)  # alpha becomes uniform ...
        assert torch.allclose(b.attention, torch.full_like(b.attention, 1 / 49))
        assert not torch.allclose(a.attribute_scores, b.attribute_scores)  # ... so h and e change
    elif key == "attribute_attention":
        assert torch.allclose(a.attention, b.attention)  # attention untouched
        assert torch.allclose(a.attribute_scores, b.attribute_scores)  # e untouched
        assert torch.equal(b.attribute_gates, torch.ones_like(b.attribute_gates))  # beta dropped
        assert torch.allclose(b.scores, b.attribute_scores @ full.class_semantics.t(), atol=1e-5)  # eq. 5
    elif key in (None, "trainable_semantics"):
        for name in ("scores", "attention", "attribute_scores", "attribute_gates"):
            assert torch.allclose(getattr(a, name), getattr(b, name))  # same forward
