"""DAZLE (Huynh & Elhamifar, CVPR 2020): the plain one-einsum-per-equation transcription.

The equations transcribed literally, as the authors' formulation computes them. This is the
yardstick of tests/test_dazle_equivalence.py and of bench/train_step.py, not what the harness
trains (that is models/dazle.py): one einsum per equation of the paper (section 4.2, eq. 2-7),
the attended feature h [B, A, F] materialised, each V W product formed inside the einsum of its
equation. torch.einsum without opt_einsum contracts left to right, so eq. 2 costs 2 B A F R
flops whatever the word-vector dimension D is. Written from the equations and DESIGN.md
section 3, not from the authors' code.

Names follow the authors' module (W_1 = our W_e, W_2 = our W_alpha, W_3 = our W_beta, `att`
the L2-normalised class semantics), so `ReferenceDAZLE.from_model` is the parameter mapping
between the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceDAZLE(nn.Module):
    """The paper's equations 2-7, one einsum each, with the same switches as models.dazle.DAZLE."""

    def __init__(
        self,
        *,
        att: Tensor,
        V: Tensor,
        W_1: Tensor,
        W_2: Tensor,
        W_3: Tensor,
        dense_attention: bool = True,
        attribute_attention: bool = True,
        trainable_semantics: bool = True,
    ) -> None:
        super().__init__()
        self.register_buffer("att", att.detach().clone())  # [C, A], rows already L2-normalised
        self.V = nn.Parameter(V.detach().clone(), requires_grad=trainable_semantics)  # [A, D]
        self.W_1 = nn.Parameter(W_1.detach().clone())  # [D, F] attribute scores (eq. 4)
        self.W_2 = nn.Parameter(W_2.detach().clone())  # [D, F] dense attention (eq. 2)
        self.W_3 = nn.Parameter(W_3.detach().clone())  # [D, F] attention over attributes (eq. 6)
        self.dense_attention = dense_attention
        self.attribute_attention = attribute_attention

    @classmethod
    def from_model(cls, model: nn.Module) -> ReferenceDAZLE:
        """A reference holding copies of `model`'s parameter values (a models.dazle.DAZLE)."""
        return cls(
            att=model.class_semantics,
            V=model.V,
            W_1=model.W_e,
            W_2=model.W_alpha,
            W_3=model.W_beta,
            dense_attention=model.dense_attention,
            attribute_attention=model.attribute_attention,
            trainable_semantics=model.V.requires_grad,
        )

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        if features.dim() == 4:
            features = features.flatten(2)  # [B, F, H, W] -> [B, F, R]
        Fs = F.normalize(features.to(self.W_1.dtype), dim=1)  # region features, L2 over F
        num_regions = Fs.shape[-1]

        if self.dense_attention:
            logits = torch.einsum("ad,df,bfr->bar", self.V, self.W_2, Fs)  # eq. 2: v_a^T W_2 f_r
            alpha = F.softmax(logits, dim=-1)
        else:
            alpha = Fs.new_full((Fs.shape[0], self.V.shape[0], num_regions), 1.0 / num_regions)
        h = torch.einsum("bar,bfr->baf", alpha, Fs)  # eq. 3: h_a = sum_r alpha_{a,r} f_r
        e = torch.einsum("ad,df,baf->ba", self.V, self.W_1, h)  # eq. 4: e_a = v_a^T W_1 h_a
        if self.attribute_attention:
            beta = torch.sigmoid(torch.einsum("ad,df,baf->ba", self.V, self.W_3, h))  # eq. 6
            s = torch.einsum("ca,ba,ba->bc", self.att, e, beta)  # eq. 7: s^c = sum_a e_a z^c_a beta_a
        else:
            beta = torch.ones_like(e)
            s = torch.einsum("ca,ba->bc", self.att, e)  # eq. 5
        return {"scores": s, "attention": alpha, "attribute_scores": e, "attribute_gates": beta}
