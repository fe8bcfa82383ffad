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

    def _projections(self, regions: Tensor) -> Tensor:
        """v_a^T W_k f_r for k in (alpha, e, beta), stacked: [3, B, A, R]."""
        batch, _, num_regions = regions.shape
        num_attr, word_dim = self.V.shape
        weights = torch.cat([self.W_alpha, self.W_e, self.W_beta], dim=0)  # [3D, F]
        if num_attr > word_dim:
            # Through D first: 2*B*3D*F*R + 2*3*B*A*D*R flops (cheaper when A > D, e.g. DeepFashion).
            projected = torch.matmul(weights, regions)  # [B, 3D, R]
            projected = projected.view(batch, 3, word_dim, num_regions).transpose(0, 1)  # [3, B, D, R]
            return torch.matmul(self.V, projected)  # [3, B, A, R]
        # Through A first: the three V W products once per step, then one GEMM with the regions.
        vw = torch.matmul(self.V, weights.view(3, word_dim, -1))  # [3, A, F]
        out = torch.matmul(vw.reshape(3 * num_attr, -1), regions)  # [B, 3A, R]
        return out.view(batch, 3, num_attr, num_regions).transpose(0, 1)

    def forward(self, features: Tensor) -> DAZLEOutput:
        if features.dim() == 4:
            features = features.flatten(2)  # [B, F, H, W] -> [B, F, R]
        if features.dim() != 3 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"expected features [B, {self.feature_dim}, R] or [B, {self.feature_dim}, H, W], "
                f"got {tuple(features.shape)}"
            )
        regions = F.normalize(features, dim=1)  # L2 per region
        logits_alpha, proj_e, proj_beta = self._projections(regions)  # each [B, A, R]

        if self.dense_attention:
            attention = torch.softmax(logits_alpha, dim=-1)  # eq. 2
        else:
            attention = torch.full_like(proj_e, 1.0 / proj_e.shape[-1])  # h_a = mean of regions

        # eq. 3-4 folded: e_a = v_a^T W_e h_a = sum_r alpha_{a,r} v_a^T W_e f_r
        attribute_scores = (attention * proj_e).sum(-1)  # [B, A]
        if self.attribute_attention:
            attribute_gates = torch.sigmoid((attention * proj_beta).sum(-1))  # eq. 6
            gated = attribute_scores * attribute_gates
        else:
            attribute_gates = torch.ones_like(attribute_scores)
            gated = attribute_scores
        scores = gated @ self.class_semantics.t()  # eq. 7 (eq. 5 ungated): [B, C]
        return DAZLEOutput(scores, attention, attribute_scores, attribute_gates)

    def calibrated_scores(self, scores: Tensor) -> Tensor:
        """eq. 13: scores plus the calibration margin (+1 unseen, -1 seen)."""
        return scores + self.calibration_margin
