"""DAZLE: Dense Attribute-Based Attention (Huynh & Elhamifar, CVPR 2020), pure PyTorch.

Implements section 4.2 of the paper:
  eq. 2-3  dense attention   alpha_{a,r} = softmax_r(v_a^T W_alpha f_r),  h_a = sum_r alpha_{a,r} f_r
  eq. 4    attribute score   e_a = v_a^T W_e h_a
  eq. 6    attribute gate    beta_a = sigmoid(v_a^T W_beta h_a)
  eq. 7    class score       s^c = sum_a e_a z^c_a beta_a        (eq. 5 without the gate)
  eq. 11   calibration margin +1 for unseen classes, -1 for seen ones (a buffer here)
  eq. 13   calibrated score  s^c + margin_c                          (calibrated_scores)
The loss of eq. 12 is models/losses.py; the class splits and the training loop are the harness's.

Where the paper is silent the authors' released code decides: region features and class
semantic rows are L2-normalised, V starts from L2-normalised word vectors, W_e ~ N(0, 1) and
W_alpha = W_beta = 0 (uniform attention, beta = 0.5 at the start).

Deviations from the released code (hbdat/cvpr20_DAZLE, core/DAZLE.py), stated:
- Dense attention off (Table 4's "mean features" rows): the mean of the region features is h_a
  for every a, so it feeds both e_a (eq. 4) and beta_a (eq. 6), as the paper's text has it
  (attention on attributes "by using mean of features from all image regions"). The released
  code's uniform_att_1 replaces alpha by the uniform average for e only; it still computes the
  dense attention and gates with beta of the attended features.
- Not a deviation, but easy to misread: the cross-entropy of eq. 8-9 runs on the raw scores s;
  the margin of eq. 11 enters only the self-calibration term and the prediction (eq. 13). The
  released code adds the margin in forward() and subtracts it again before its cross-entropy,
  which is the same thing.

Speed without changing the numbers (docs/performance.md): h_a is never built. Because e_a and
beta_a are linear in h_a, e_a = sum_r alpha_{a,r} (v_a^T W_e f_r), so the three projections
v_a^T W_k f_r share one product with the regions, laid out [F, B*R] for the whole batch, and
are contracted through the word-vector dimension D when A > D, through A otherwise. The
attention part, with its hand-written backward, is models/dazle_attention.py;
tests/test_dazle_equivalence.py holds all of it to a literal transcription of the equations
(models/dazle_reference.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dazle_attention import dense_attention_scores

# Which side of V W the regions are contracted through (DAZLE's `contraction`)
Contraction = Literal["auto", "word_dim", "attributes"]
CONTRACTIONS: tuple[str, ...] = get_args(Contraction)


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

    `contraction` is the side of V W the regions are contracted through: "auto" takes the
    word-vector dimension D when there are more attributes than D (DeepFashion), the attributes
    otherwise; "word_dim" and "attributes" force one. Both orders give the same numbers (the
    equivalence tests force each one); only the cost differs.
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
        contraction: Contraction = "auto",
    ) -> None:
        super().__init__()
        if contraction not in CONTRACTIONS:
            raise ValueError(f"contraction must be 'auto', 'word_dim' or 'attributes', got {contraction!r}")
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
        self.contraction = contraction
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
        return self.contraction == "word_dim"

    def _project(self, regions: Tensor, weights: list[Tensor]) -> Tensor:
        """v_a^T W_k x_n for every slab k, attribute a and column n of `regions` [F, N]: [K, A, N].

        Used where no attention is needed (the mean-region ablation), so N is just the batch.
        """
        slabs = len(weights)
        num_attr, word_dim = self.V.shape
        v = self.V.expand(slabs, num_attr, word_dim)
        if self._use_word_dim():
            projected = torch.cat(weights, dim=0) @ regions  # [K*D, N]
            return torch.bmm(v, projected.view(slabs, word_dim, -1))  # [K, A, N]
        vw = torch.bmm(v, torch.stack(weights))  # [K, A, F]
        return (vw.view(slabs * num_attr, -1) @ regions).view(slabs, num_attr, -1)

    def _region_columns(self, features: Tensor) -> Tensor:
        """Regions L2-normalised and laid out [F, B*R], so that every slab is one GEMM per batch.

        The normalisation is the transposing copy itself (a division written straight into the
        columns, which also casts float16 caches), so it costs no pass of its own; features that
        need a gradient, or torch.compile, take the plain autograd form.
        """
        batch, dim, num_regions = features.shape
        dtype = self.W_e.dtype
        if (features.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
            f = features.to(dtype)
            norms = torch.linalg.vector_norm(f, dim=1, keepdim=True).clamp_min(1e-12)  # [B, 1, R]
            return (f / norms).transpose(0, 1).reshape(dim, batch * num_regions)
        if features.dtype == dtype:
            norms = features.square().sum(1).sqrt_()  # [B, R]; faster here than vector_norm's kernel
        elif torch.promote_types(features.dtype, dtype) == dtype:  # float16 caches: no overflow of the squares
            norms = torch.linalg.vector_norm(features, dim=1, dtype=dtype)
        else:
            norms = torch.linalg.vector_norm(features, dim=1).to(dtype)
        columns = torch.empty((dim, batch, num_regions), dtype=dtype, device=features.device)
        torch.div(features.transpose(0, 1), norms.clamp_min_(1e-12), out=columns)  # as F.normalize: x / max(|x|, eps)
        return columns.view(dim, batch * num_regions)

    def forward(self, features: Tensor) -> DAZLEOutput:
        if features.dim() == 4:
            features = features.flatten(2)  # [B, F, H, W] -> [B, F, R]
        if features.dim() != 3 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"expected features [B, {self.feature_dim}, R] or [B, {self.feature_dim}, H, W], "
                f"got {tuple(features.shape)}"
            )
        batch, dim, num_regions = features.shape
        num_attr = self.V.shape[0]
        regions = self._region_columns(features)  # [F, B*R], columns L2-normalised
        gate_weights = [self.W_beta] if self.attribute_attention else []

        if self.dense_attention:
            # eq. 2-4, 6: e_a = v_a^T W_e h_a = sum_r alpha_{a,r} v_a^T W_e f_r, so h is never built
            alpha, slab_scores = dense_attention_scores(
                regions, self.V, self._use_word_dim(), num_regions, self.W_alpha, self.W_e, *gate_weights
            )  # [A, B, R], [1 or 2, A, B]
            attribute_scores = slab_scores[0]  # [A, B]
            gate_logits = slab_scores[1] if self.attribute_attention else None
            attention = alpha.permute(1, 0, 2)  # [B, A, R]
        else:
            # h_a is the mean of the regions for every a: average first, then project [F, B].
            grid = regions.view(dim, batch, num_regions)
            mean_region = grid.mean(-1)
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
