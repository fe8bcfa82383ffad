"""models.dazle.DAZLE gives the numbers of the authors' formulation (models/dazle_reference.py).

Same parameter values (their W_2 = our W_alpha, W_1 = W_e, W_3 = W_beta), region features and
class semantics L2-normalised: scores, attention, attribute scores and gates, and the gradients of
the paper's loss, agree to 1e-5 relative in every ablation setting, through both contraction
orders (the word-vector dimension D when A > D, the attributes otherwise), for [B, F, R] and
[B, F, H, W] inputs. The fast model must also never build the [B, A, F] tensor h.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.dazle import DAZLE
from models.dazle_reference import ReferenceDAZLE
from models.losses import dazle_loss

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


def make_model(num_attr: int, word_dim: int, feature_dim: int = 16, seed: int = 0, contraction: str = "auto",
               **switches) -> DAZLE:
    """A DAZLE with non-trivial parameters everywhere (the zero init would hide alpha and beta)."""
    gen = torch.Generator().manual_seed(seed)
    num_classes = 7
    model = DAZLE(
        class_semantics=torch.rand(num_classes, num_attr, generator=gen),
        attribute_semantics=torch.randn(num_attr, word_dim, generator=gen),
        seen_classes=torch.arange(5),
        unseen_classes=torch.tensor([5, 6]),
        feature_dim=feature_dim,
        contraction=contraction,
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
        scores, labels, margin=model.calibration_margin.to(scores.dtype), seen_classes=model.seen_classes,
        unseen_classes=model.unseen_classes, lam=0.1,
    )
    return total


def run(module, x: torch.Tensor, labels: torch.Tensor, probes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs, and gradients of the paper's loss plus a term on every other output (so that each
    path of the backward is used), under the authors' parameter names."""
    out = module(x)
    values = out if isinstance(out, dict) else vars(out)
    loss = paper_loss(module, values["scores"], labels) if isinstance(module, DAZLE) else dazle_loss(
        values["scores"], labels, margin=module.margin.to(x.dtype), seen_classes=module.seen,
        unseen_classes=module.unseen, lam=0.1)[0]
    for name, probe in zip(OUTPUTS[1:], probes, strict=True):
        loss = loss + (values[name] * probe.to(x.dtype)).sum()
    loss.backward()
    params = (module.W_alpha, module.W_e, module.W_beta, module.V) if isinstance(module, DAZLE) else (
        module.W_2, module.W_1, module.W_3, module.V)
    grads = {f"grad {n}": p.grad for n, p in zip(("W_2", "W_1", "W_3", "V"), params, strict=True)}
    return {name: values[name] for name in OUTPUTS} | grads


def reference_for(model: DAZLE) -> ReferenceDAZLE:
    ref = ReferenceDAZLE.from_model(model)
    ref.margin, ref.seen, ref.unseen = model.calibration_margin, model.seen_classes, model.unseen_classes
    return ref


def assert_equivalent(model: DAZLE, x: torch.Tensor, labels: torch.Tensor) -> None:
    """The model against the reference with the same parameter values.

    In float64 both must agree to 1e-10: the same algebra, whatever the contraction order. In
    float32 (how the model trains) ours must equal the float64 reference to 1e-5 relative;
    the float32 reference itself is off the float64 one by about 1e-5 in the gradients at
    F = 2048, so the two float32 runs are compared on the forward outputs only.
    """
    gen = torch.Generator().manual_seed(7)
    ref64 = reference_for(model).double()
    probes = [torch.randn(ref64(x.double())[name].shape, generator=gen) for name in OUTPUTS[1:]]
    truth = run(ref64, x.double(), labels, probes)
    exact = run(copy.deepcopy(model).double(), x.double(), labels, probes)
    ours = run(model, x, labels, probes)
    theirs32 = reference_for(model)(x)
    for name, expected in truth.items():
        if expected is None:  # fixed V, or a weight the ablation leaves out of the graph
            assert exact[name] is None and ours[name] is None, name
            continue
        assert ours[name].shape == expected.shape and ours[name].dtype == torch.float32, name
        assert_rel(exact[name], expected, f"{name} (float64)", tol=1e-10)
        assert_rel(ours[name], expected.float(), name)
        if name in OUTPUTS:
            assert_rel(ours[name], theirs32[name], f"{name} (both float32)")


@pytest.mark.parametrize("contraction", ["auto", "word_dim", "attributes"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("switches", SWITCHES, ids=[switch_id(s) for s in SWITCHES])
@pytest.mark.parametrize("grid", [False, True], ids=["BFR", "BFHW"])
def test_outputs_and_gradients_equal_the_reference(contraction, shape, switches, grid):
    num_attr, word_dim = SHAPES[shape]
    model = make_model(num_attr, word_dim, contraction=contraction, **switches)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 16, 3, 3, generator=gen) if grid else torch.rand(5, 16, 9, generator=gen)
    assert_equivalent(model, x, torch.tensor([0, 1, 2, 3, 4]))
    assert (model.V.grad is not None) is switches["trainable_semantics"]


@pytest.mark.parametrize("contraction", ["word_dim", "attributes"])
def test_equal_at_the_real_feature_size(contraction):
    """2048-d features over 7x7 regions: the sums are long enough for rounding to show."""
    model = make_model(40, 32, feature_dim=2048, seed=3, contraction=contraction)
    with torch.no_grad():
        model.W_alpha.mul_(4.0)  # peaked attention, as after training
    x = torch.rand(3, 2048, 7, 7, generator=torch.Generator().manual_seed(4))
    assert reference_for(model)(x)["attention"].max() > 0.2  # the attention is not near uniform
    assert_equivalent(model, x, torch.tensor([0, 3, 4]))


@pytest.mark.parametrize("contraction", ["word_dim", "attributes"])
def test_gradient_reaches_features_as_in_the_reference(contraction):
    """Features that require a gradient (a backbone trained end to end) get the reference's."""
    model = make_model(*SHAPES["A>D"], contraction=contraction)
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
    model = make_model(*SHAPES["A>D"], feature_dim=64, contraction=contraction)
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
    with pytest.raises(ValueError, match="contraction"):
        make_model(*SHAPES["A>D"], contraction="sideways")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_features_of_another_precision_are_accepted(dtype):
    """Feature caches store float16; the model normalises in its parameters' precision."""
    model = make_model(*SHAPES["A>D"])
    x = torch.rand(3, 16, 9).to(dtype)
    out = model(x)
    assert out.scores.dtype == torch.float32
    assert_rel(out.scores, model(x.float()).scores, "scores")


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


@pytest.mark.parametrize("contraction, shape, through_word_dim", [
    ("auto", "A>D", True), ("auto", "A<=D", False),
    ("word_dim", "A>D", True), ("word_dim", "A<=D", True),
    ("attributes", "A>D", False), ("attributes", "A<=D", False),
])
def test_contraction_argument_picks_the_route(contraction, shape, through_word_dim):
    """The constructor's contraction decides the route, and the instance keeps it."""
    model = make_model(*SHAPES[shape], contraction=contraction)
    assert model.contraction == contraction
    assert model._use_word_dim() is through_word_dim


@pytest.mark.parametrize("switches", SWITCHES, ids=[switch_id(s) for s in SWITCHES])
def test_reference_follows_the_equations(switches):
    """The reference itself, against the equations written without einsum, in float64:
    alpha a distribution over regions (uniform without dense attention), h = alpha f (eq. 3),
    e_a = (V W_1)_a . h_a (eq. 4), beta = sigmoid((V W_3)_a . h_a) or ones (eq. 6), and
    s = (e * beta) z^T (eq. 7 / eq. 5); the same for [B, F, R] and [B, F, H, W] inputs."""
    ref = ReferenceDAZLE.from_model(make_model(*SHAPES["A>D"], **switches)).double()
    x = torch.rand(5, 16, 3, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out = ref(x)
    flat = ref(x.flatten(2))
    for name in OUTPUTS:
        assert_rel(out[name], flat[name], f"{name} (grid against flat)", tol=1e-12)
    regions = torch.nn.functional.normalize(x.flatten(2), dim=1)  # [B, F, R]
    alpha = out["attention"]  # [B, A, R]
    torch.testing.assert_close(alpha.sum(-1), torch.ones(alpha.shape[:2], dtype=alpha.dtype))
    if not switches["dense_attention"]:
        torch.testing.assert_close(alpha, torch.full_like(alpha, 1.0 / alpha.shape[-1]))
    h = torch.bmm(alpha, regions.transpose(1, 2))  # [B, A, F]
    e = ((ref.V @ ref.W_1) * h).sum(-1)  # [B, A]
    beta = torch.sigmoid(((ref.V @ ref.W_3) * h).sum(-1)) if switches["attribute_attention"] else torch.ones_like(e)
    assert_rel(out["attribute_scores"], e, "e", tol=1e-10)
    assert_rel(out["attribute_gates"], beta, "beta", tol=1e-10)
    assert_rel(out["scores"], (e * beta) @ ref.att.t(), "s", tol=1e-10)
    assert ref.V.requires_grad is switches["trainable_semantics"]
