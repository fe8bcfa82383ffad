"""The dense attention of DAZLE (Huynh & Elhamifar, CVPR 2020) as one autograd Function.

Computes, for a whole batch at once, eq. 2 (alpha_{a,r} = softmax_r(v_a^T W_alpha f_r)) and the
slab scores S_k[a, b] = sum_r alpha_{a,b,r} v_a^T W_k f_{b,r} = v_a^T W_k h_{b,a} for W_e (eq. 4)
and W_beta (the gate logits of eq. 6), with a backward written out by hand; h (eq. 3) is never
built. models/dazle.py calls it; tests/test_dazle_equivalence.py holds its outputs and gradients
to the plain transcription of the equations (models/dazle_reference.py). Why it is shaped this
way, with measurements: docs/performance.md.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _gemm_dtype(tensor: Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for the tensor's device, else the tensor's own."""
    kind = tensor.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return tensor.dtype


class _DenseAttentionScores(torch.autograd.Function):
    """eq. 2-4 and the gate logits of eq. 6 for a batch, with a backward written out by hand.

    Inputs: regions X [F, B*R] with L2-normalised columns, V [A, D], the word-vector route
    flag, R, then the K slab weights W_alpha, W_e[, W_beta], each [D, F]. Outputs: alpha
    [A, B, R] and S [K-1, A, B] with S_k[a, b] = sum_r alpha_{a,b,r} v_a^T W_k f_{b,r} =
    v_a^T W_k h_{b,a}: h is never built.

    The projections P_k = V W_k X come from one product with the regions for all K slabs:
    through D, K GEMMs W_k X into one buffer, then V, and dW of all slabs in one GEMM; through
    A, the products V W_k once per step and one GEMM with X. The caller normalises X in the
    copy that lays it out (models/dazle.py), so no pass here rescales W X, P or their
    gradients. The backward writes dP in place (autograd would build per-slab zeros and a
    stack) and takes the softmax's correction term sum_r alpha_r dalpha_r = sum_k dS_k S_k
    from the forward's S instead of a pass over [A, B, R]. GEMMs run in the autocast dtype
    when autocast is on; softmax and the sums over regions stay in float32.
    """

    @staticmethod
    def forward(ctx, regions: Tensor, V: Tensor, through_word_dim: bool,
                num_regions: int, *weights: Tensor) -> tuple[Tensor, Tensor]:
        kind = regions.device.type
        dtype = _gemm_dtype(regions)
        with torch.autocast(kind, enabled=False):
            slabs, (num_attr, word_dim) = len(weights), V.shape
            columns = regions.shape[1]
            x, v, ws = regions.to(dtype), V.to(dtype), [w.to(dtype) for w in weights]
            proj = x.new_empty(slabs, num_attr, columns)  # [K, A, N]
            if through_word_dim:
                inner = x.new_empty(slabs, word_dim, columns)  # W_k X: [K, D, N]
                for k, w in enumerate(ws):
                    torch.mm(w, x, out=inner[k])
                for k in range(slabs):
                    torch.mm(v, inner[k], out=proj[k])
            else:
                inner = x.new_empty(slabs, num_attr, x.shape[0])  # V W_k: [K, A, F]
                for k, w in enumerate(ws):
                    torch.mm(v, w, out=inner[k])
                torch.mm(inner.view(slabs * num_attr, -1), x, out=proj.view(slabs * num_attr, columns))
            acc = torch.promote_types(dtype, torch.float32)  # bf16 GEMMs, float32 softmax and sums
            p = proj.view(slabs, num_attr, columns // num_regions, num_regions).to(acc)  # [K, A, B, R]
            alpha = torch.softmax(p[0], dim=-1)  # eq. 2
            scores = torch.einsum("kabr,abr->kab", p[1:], alpha)  # [K-1, A, B]: sum_r alpha P_k
        ctx.through_word_dim, ctx.dtype, ctx.input_dtypes = through_word_dim, dtype, (regions.dtype, V.dtype)
        ctx.set_materialize_grads(False)  # alpha is rarely in the loss: no [A, B, R] of zeros to fill and read
        ctx.save_for_backward(x, v, alpha, p, scores, inner, *ws)
        return alpha, scores

    @staticmethod
    def backward(ctx, d_alpha: Tensor | None, d_scores: Tensor | None):
        x, v, alpha, p, scores, inner, *ws = ctx.saved_tensors
        slabs, (num_attr, word_dim), columns = len(ws), v.shape, x.shape[1]
        dtype, needs = ctx.dtype, ctx.needs_input_grad
        with torch.autocast(x.device.type, enabled=False):
            if d_scores is None:
                d_scores = scores.new_zeros(scores.shape)
            ds = d_scores.unsqueeze(-1)  # [K-1, A, B, 1]
            # dL/dlogits = alpha * (g - sum_r alpha g) with g = sum_k dS_k P_k (+ the grad of alpha itself)
            correction = (d_scores * scores).sum(0).unsqueeze(-1)  # [A, B, 1]
            if d_alpha is not None:
                correction = correction + (alpha * d_alpha).sum(-1, keepdim=True)
            dp = alpha.new_empty(p.shape)  # [K, A, B, R]
            g = torch.addcmul(correction.neg(), p[1], ds[0], out=dp[0])  # built in place: no [A, B, R] temporary
            for k in range(2, slabs):
                g.addcmul_(p[k], ds[k - 1])
            if d_alpha is not None:
                g += d_alpha
            g.mul_(alpha)
            torch.mul(alpha, ds, out=dp[1:])  # dS_k/dP_k = alpha
            dp = dp.view(slabs, num_attr, columns).to(dtype)

            d_x = d_v = None
            if ctx.through_word_dim:
                if needs[1]:
                    d_v = torch.mm(dp[0], inner[0].t())
                    for k in range(1, slabs):
                        d_v.addmm_(dp[k], inner[k].t())
                d_inner = dp.new_empty(slabs, word_dim, columns)  # [K, D, N]
                for k in range(slabs):
                    torch.mm(v.t(), dp[k], out=d_inner[k])
                d_w = torch.mm(d_inner.view(slabs * word_dim, columns), x.t())  # all K at once: [K*D, F]
                d_ws = list(d_w.view(slabs, word_dim, -1).unbind(0))
                if needs[0]:
                    d_x = torch.mm(torch.cat(ws).t(), d_inner.view(slabs * word_dim, columns))
            else:
                if needs[0]:
                    d_x = torch.mm(inner.view(slabs * num_attr, -1).t(), dp.view(slabs * num_attr, columns))
                d_inner = torch.mm(dp.view(slabs * num_attr, columns), x.t()).view(slabs, num_attr, -1)  # [K, A, F]
                d_ws = [torch.mm(v.t(), d_inner[k]) for k in range(slabs)]
                if needs[1]:
                    d_v = torch.mm(d_inner[0], ws[0].t())
                    for k in range(1, slabs):
                        d_v.addmm_(d_inner[k], ws[k].t())
        regions_dtype, param_dtype = ctx.input_dtypes
        d_x = None if d_x is None else d_x.to(regions_dtype)
        d_v = None if d_v is None else d_v.to(param_dtype)
        return (d_x, d_v, None, None, *(d.to(param_dtype) for d in d_ws))


def dense_attention_scores(regions: Tensor, V: Tensor, through_word_dim: bool,
                           num_regions: int, *weights: Tensor) -> tuple[Tensor, Tensor]:
    """alpha [A, B, R] (eq. 2) and S [K-1, A, B] (S_k = v_a^T W_k h_a, eq. 4 and 6's logits).

    `regions` [F, B*R] with L2-normalised columns, V [A, D],
    the contraction route (through D when True, through A otherwise), R, then W_alpha and the
    slab weights W_e[, W_beta], each [D, F]. See _DenseAttentionScores for how it is computed.
    """
    return _DenseAttentionScores.apply(regions, V, through_word_dim, num_regions, *weights)
