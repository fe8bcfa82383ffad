"""DAZLE: Dense Attribute-Based Attention (Huynh & Elhamifar, CVPR 2020), pure PyTorch.

Implements section 4.2 of the paper:
  eq. 2-3  dense attention   alpha_{a,r} = softmax_r(v_a^T W_alpha f_r),  h_a = sum_r alpha_{a,r} f_r
  eq. 4    attribute score   e_a = v_a^T W_e h_a
  eq. 6    attribute gate    beta_a = sigmoid(v_a^T W_beta h_a)
  eq. 7    class score       s^c = sum_a e_a z^c_a beta_a        (eq. 5 without the gate)

Where the paper is silent the authors' released code decides: region features and class
semantic rows are L2-normalised, V starts from L2-normalised word vectors, W_e ~ N(0, 1) and
W_alpha = W_beta = 0 (uniform attention, beta = 0.5 at the start).

Speed without changing the numbers: h_a is never built. Because e_a and beta_a are linear in
h_a, e_a = sum_r alpha_{a,r} (v_a^T W_e f_r), so the three projections share one product of the
stacked [W_alpha; W_e; W_beta] with the regions, contracted through whichever of the word-vector
dimension D or the attribute count A is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DAZLEOutput:
    """Everything the harness may read from a forward pass."""

    scores: Tensor  # [B, C] class scores s, no calibration margin
    attention: Tensor  # [B, A, R] spatial attention alpha
    attribute_scores: Tensor  # [B, A] e
    attribute_gates: Tensor  # [B, A] beta (ones when attribute attention is off)


class DAZLE(nn.Module):
    """Dense attribute-based attention over region features.

    The ablation switches are those of the paper's Table 4:
    dense_attention=False replaces alpha by the uniform average over regions,
    attribute_attention=False drops beta (eq. 5 instead of eq. 7),
    trainable_semantics=False freezes V at its word-vector initialisation.
    """

    # Which side of V W the regions are contracted through: "auto" takes the word-vector
    # dimension D when there are more attributes than D (DeepFashion), the attributes otherwise.
    # Both orders give the same numbers; the equivalence tests force each one.
    contraction: str = "auto"

    def __init__(
        self,
        *,
        class_semantics: Tensor,
        attribute_semantics: Tensor,
        seen_classes: Tensor,
        unseen_classes: Tensor,
        feature_dim: int,
        dense_attention: bool = True,
        attribute_attention: bool = True,
        trainable_semantics: bool = True,
    ) -> None:
        super().__init__()
        num_classes, num_attributes = class_semantics.shape
        if attribute_semantics.shape[0] != num_attributes:
            raise ValueError(
                f"attribute_semantics has {attribute_semantics.shape[0]} rows, "
                f"class_semantics has {num_attributes} attributes"
            )
        word_dim = attribute_semantics.shape[1]
        self.dense_attention = dense_attention
        self.attribute_attention = attribute_attention
        self.trainable_semantics = trainable_semantics
        self.feature_dim = feature_dim

        z = F.normalize(class_semantics.detach().float(), dim=1)
        self.register_buffer("class_semantics", z)  # [C, A]
        self.register_buffer("seen_classes", seen_classes.detach().long().clone())
        self.register_buffer("unseen_classes", unseen_classes.detach().long().clone())
        margin = torch.full((num_classes,), -1.0)
        margin[self.unseen_classes] = 1.0
        self.register_buffer("calibration_margin", margin)  # eq. 11: +1 unseen, -1 seen

        v0 = F.normalize(attribute_semantics.detach().float(), dim=1)
        self.V = nn.Parameter(v0, requires_grad=trainable_semantics)  # [A, D]
        self.W_alpha = nn.Parameter(torch.zeros(word_dim, feature_dim))  # [D, F]
        self.W_e = nn.Parameter(torch.randn(word_dim, feature_dim))  # [D, F]
        self.W_beta = nn.Parameter(torch.zeros(word_dim, feature_dim))  # [D, F]

    @property
    def num_attributes(self) -> int:
        return self.V.shape[0]

    def _use_word_dim(self) -> bool:
        if self.contraction == "auto":
            return self.V.shape[0] > self.V.shape[1]
        if self.contraction not in ("word_dim", "attributes"):
            raise ValueError(f"contraction must be 'auto', 'word_dim' or 'attributes', got {self.contraction!r}")
        return self.contraction == "word_dim"

    def _project(self, regions: Tensor, weights: list[Tensor]) -> Tensor:
        """v_a^T W_k x_n for every slab k, attribute a and column n of `regions` [F, N]: [K, A, N].

        The K slabs share one GEMM with the regions. Through D (A > D): the stacked [K*D, F]
        weights meet the regions first, 2*K*D*F*N flops, then V, 2*K*A*D*N. Through A: the K
        products V W_k once per step, 2*K*A*D*F flops, then 2*K*A*F*N with the regions.
        """
        slabs = len(weights)
        num_attr, word_dim = self.V.shape
        columns = regions.shape[1]
        v = self.V.expand(slabs, num_attr, word_dim)
        if self._use_word_dim():
            projected = torch.cat(weights, dim=0) @ regions  # [K*D, N]
            return torch.bmm(v, projected.view(slabs, word_dim, columns))  # [K, A, N]
        vw = torch.bmm(v, torch.stack(weights))  # [K, A, F]
        return (vw.view(slabs * num_attr, -1) @ regions).view(slabs, num_attr, columns)

    def forward(self, features: Tensor) -> DAZLEOutput:
        if features.dim() == 4:
            features = features.flatten(2)  # [B, F, H, W] -> [B, F, R]
        if features.dim() != 3 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"expected features [B, {self.feature_dim}, R] or [B, {self.feature_dim}, H, W], "
                f"got {tuple(features.shape)}"
            )
        features = features.to(self.W_e.dtype)  # float16 caches: normalise in the parameters' precision
        batch, dim, num_regions = features.shape
        num_attr = self.V.shape[0]
        # L2 per region, laid out [F, B*R] so that every slab is one GEMM over the whole batch.
        norms = torch.linalg.vector_norm(features, dim=1, keepdim=True).clamp_min(1e-12)  # [B, 1, R]
        regions = (features / norms).transpose(0, 1).reshape(dim, batch * num_regions)  # [F, B*R]
        gate_weights = [self.W_beta] if self.attribute_attention else []

        if self.dense_attention:
            projections = self._project(regions, [self.W_alpha, self.W_e, *gate_weights])
            logits, proj_e, *proj_beta = projections.view(-1, num_attr, batch, num_regions).unbind(0)
            alpha = torch.softmax(logits, dim=-1)  # eq. 2, [A, B, R]
            # eq. 3-4 folded: e_a = v_a^T W_e h_a = sum_r alpha_{a,r} v_a^T W_e f_r; h is never built
            attribute_scores = (alpha * proj_e).sum(-1)  # [A, B]
            gate_logits = (alpha * proj_beta[0]).sum(-1) if proj_beta else None
            attention = alpha.permute(1, 0, 2)  # [B, A, R]
        else:
            # h_a is the mean of the regions for every a: average first, then project [F, B].
            mean_region = regions.view(dim, batch, num_regions).mean(-1)
            attribute_scores, *gate_logits_list = self._project(mean_region, [self.W_e, *gate_weights]).unbind(0)
            gate_logits = gate_logits_list[0] if gate_logits_list else None
            attention = regions.new_full((1, 1, 1), 1.0 / num_regions).expand(batch, num_attr, num_regions)

        if gate_logits is not None:
            attribute_gates = torch.sigmoid(gate_logits)  # eq. 6, [A, B]
            gated = attribute_scores * attribute_gates
        else:
            attribute_gates = torch.ones_like(attribute_scores)
            gated = attribute_scores
        scores = gated.t() @ self.class_semantics.t()  # eq. 7 (eq. 5 ungated): [B, C]
        return DAZLEOutput(scores, attention, attribute_scores.t(), attribute_gates.t())

    def calibrated_scores(self, scores: Tensor) -> Tensor:
        """eq. 13: scores plus the calibration margin (+1 unseen, -1 seen)."""
        return scores + self.calibration_margin
