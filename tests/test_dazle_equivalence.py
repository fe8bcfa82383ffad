"""models.dazle.DAZLE gives the numbers of the authors' formulation (bench/reference_dazle.py).

Same parameter values (their W_2 = our W_alpha, W_1 = W_e, W_3 = W_beta), region features and
class semantics L2-normalised: scores, attention, attribute scores and gates, and the gradients of
the paper's loss, agree to 1e-5 relative in every ablation setting, through both contraction
orders (the word-vector dimension D when A > D, the attributes otherwise), for [B, F, R] and
[B, F, H, W] inputs. The fast model must also never build the [B, A, F] tensor h.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.dazle import DAZLE
from models.losses import dazle_loss

_spec = importlib.util.spec_from_file_location(
    "reference_dazle", Path(__file__).resolve().parents[1] / "bench" / "reference_dazle.py"
)
reference_dazle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference_dazle)
ReferenceDAZLE = reference_dazle.ReferenceDAZLE

OUTPUTS = ("scores", "attention", "attribute_scores", "attribute_gates")
# (attributes, word-vector dim): A > D takes the word-vector route under "auto", A <= D the attribute route
SHAPES = {"A>D": (9, 5), "A<=D": (4, 6)}
SWITCHES = [
    dict(zip(("dense_attention", "attribute_attention", "trainable_semantics"), values, strict=True))
    for values in itertools.product((True, False), repeat=3)
]


def switch_id(switches: dict) -> str:
    off = [k.split("_")[0] for k, v in switches.items() if not v]
    return "full" if not off else "no-" + "-".join(off)


def make_model(num_attr: int, word_dim: int, feature_dim: int = 16, seed: int = 0, **switches) -> DAZLE:
    """A DAZLE with non-trivial parameters everywhere (the zero init would hide alpha and beta)."""
    gen = torch.Generator().manual_seed(seed)
    num_classes = 7
    model = DAZLE(
        class_semantics=torch.rand(num_classes, num_attr, generator=gen),
        attribute_semantics=torch.randn(num_attr, word_dim, generator=gen),
        seen_classes=torch.arange(5),
        unseen_classes=torch.tensor([5, 6]),
        feature_dim=feature_dim,
        **switches,
    )
    with torch.no_grad():
        for w in (model.W_alpha, model.W_e, model.W_beta):
            w.copy_(torch.randn(w.shape, generator=gen))
        model.V.add_(0.3 * torch.randn(model.V.shape, generator=gen))  # as after some training: rows not unit
    return model


def assert_rel(ours: torch.Tensor, ref: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """Equal to `tol` relative: per element, with the tensor's scale as the floor near zero."""
    scale = ref.detach().abs().max().clamp_min(1e-30)
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=tol, atol=tol * float(scale), msg=lambda m: f"{what}: {m}")


def paper_loss(model: DAZLE, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total, _, _ = dazle_loss(
        scores, labels, margin=model.calibration_margin, seen_classes=model.seen_classes,
        unseen_classes=model.unseen_classes, lam=0.1,
    )
    return total


@pytest.mark.parametrize("contraction", ["auto", "word_dim", "attributes"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("switches", SWITCHES, ids=[switch_id(s) for s in SWITCHES])
@pytest.mark.parametrize("grid", [False, True], ids=["BFR", "BFHW"])
def test_outputs_and_gradients_equal_the_reference(contraction, shape, switches, grid):
    num_attr, word_dim = SHAPES[shape]
    model = make_model(num_attr, word_dim, **switches)
    model.contraction = contraction
    ref = ReferenceDAZLE.from_model(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 16, 3, 3, generator=gen) if grid else torch.rand(5, 16, 9, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4])

    out, expected = model(x), ref(x)
    for name in OUTPUTS:
        assert getattr(out, name).shape == expected[name].shape, name
        assert_rel(getattr(out, name), expected[name], name)

    # the paper's loss, plus terms on every other output so that each path of the backward is checked
    probes = [torch.randn(expected[name].shape, generator=gen) for name in OUTPUTS[1:]]
    for result in (out, expected):
        values = result if isinstance(result, dict) else vars(result)
        loss = paper_loss(model, values["scores"], labels)
        for name, probe in zip(OUTPUTS[1:], probes, strict=True):
            loss = loss + (values[name] * probe).sum()
        loss.backward()
    for ours, theirs in ((model.W_alpha, ref.W_2), (model.W_e, ref.W_1), (model.W_beta, ref.W_3), (model.V, ref.V)):
        if theirs.grad is None:
            assert ours.grad is None  # fixed V, or a weight the ablation leaves out of the graph
            continue
        assert ours.grad is not None
        assert_rel(ours.grad, theirs.grad, "gradient")
    assert (model.V.grad is not None) is switches["trainable_semantics"]


@pytest.mark.parametrize("num_attr", [80, 24], ids=["A>D", "A<=D"])
def test_equal_at_the_real_feature_size(num_attr):
    """2048-d features over 7x7 regions: the sums are long enough for rounding to show."""
    model = make_model(num_attr, 32, feature_dim=2048, seed=3)
    with torch.no_grad():
        model.W_alpha.mul_(8.0)  # peaked attention, as after training
    ref = ReferenceDAZLE.from_model(model)
    x = torch.rand(3, 2048, 7, 7, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 3, 4])
    out, expected = model(x), ref(x)
    assert expected["attention"].max() > 0.2  # the attention is not near uniform
    for name in OUTPUTS:
        assert_rel(getattr(out, name), expected[name], name)
    paper_loss(model, out.scores, labels).backward()
    paper_loss(model, expected["scores"], labels).backward()
    for ours, theirs in ((model.W_alpha, ref.W_2), (model.W_e, ref.W_1), (model.W_beta, ref.W_3), (model.V, ref.V)):
        assert_rel(ours.grad, theirs.grad, "gradient")


@pytest.mark.parametrize("contraction", ["word_dim", "attributes"])
def test_gradient_reaches_features_as_in_the_reference(contraction):
    """Features that require a gradient (a backbone trained end to end) get the reference's."""
    model = make_model(*SHAPES["A>D"])
    model.contraction = contraction
    ref = ReferenceDAZLE.from_model(model)
    x = torch.rand(4, 16, 9, generator=torch.Generator().manual_seed(5))
    grads = []
    for module in (model, ref):
        xi = x.clone().requires_grad_()
        out = module(xi)
        scores = out["scores"] if isinstance(out, dict) else out.scores
        paper_loss(model, scores, torch.tensor([0, 1, 2, 3])).backward()
        grads.append(xi.grad)
    assert_rel(grads[0], grads[1], "feature gradient")


@pytest.mark.parametrize("contraction", ["word_dim", "attributes"])
def test_bf16_autocast_stays_close_and_keeps_float32_gradients(contraction):
    """The GPU path's mixed precision, exercised on the CPU: bf16 GEMMs, float32 softmax and grads."""
    model = make_model(*SHAPES["A>D"], feature_dim=64)
    model.contraction = contraction
    x = torch.rand(4, 64, 9, generator=torch.Generator().manual_seed(6))
    exact = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x)
        loss = paper_loss(model, mixed.scores.float(), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert mixed.attention.dtype == torch.float32
    assert_rel(mixed.attention.float(), exact.attention, "attention", tol=5e-2)
    assert_rel(mixed.scores.float(), exact.scores, "scores", tol=5e-2)
    for p in (model.W_alpha, model.W_e, model.W_beta, model.V):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


def test_auto_contraction_follows_the_cheaper_side():
    assert make_model(*SHAPES["A>D"])._use_word_dim()
    assert not make_model(*SHAPES["A<=D"])._use_word_dim()
    model = make_model(*SHAPES["A>D"])
    model.contraction = "sideways"
    with pytest.raises(ValueError, match="contraction"):
        model(torch.rand(2, 16, 9))


def test_half_precision_features_are_accepted():
    """Feature caches store float16; the model normalises in its parameters' precision."""
    model = make_model(*SHAPES["A>D"])
    x = torch.rand(3, 16, 9).half()
    assert_rel(model(x).scores, model(x.float()).scores, "scores")


class _LargestTensor(TorchDispatchMode):
    """Records the element count of every tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_h_is_never_built(shape):
    """No tensor of the forward or backward pass is as large as h [B, A, F]; the reference's is."""
    num_attr, word_dim = SHAPES[shape]
    batch, feature_dim, regions = 8, 40, 3  # h [8, A, 40] outgrows every other tensor
    model = make_model(num_attr, word_dim, feature_dim=feature_dim)
    x = torch.rand(batch, feature_dim, regions)
    h_size = batch * num_attr * feature_dim
    for module, should_build in ((model, False), (ReferenceDAZLE.from_model(model), True)):
        with _LargestTensor() as probe:
            out = module(x)
            scores = out["scores"] if isinstance(out, dict) else out.scores
            scores.square().sum().backward()
        assert (probe.largest >= h_size) is should_build, (type(module).__name__, probe.largest, h_size)
