"""DeViSE: "A Deep Visual-Semantic Embedding Model" (Frome et al., NeurIPS 2013), as the GBU
benchmark (Xian et al.) runs it: a linear map M from holistic image features into the class
semantic space, trained with the paper's hinge rank loss,

    score     s_c(x) = x^T M z_c
    loss(x,y) = sum_{c != y} max(0, margin - s_y(x) + s_c(x))     (sum over the seen classes)

Conventions: the holistic feature is the mean of the region map (ResNet-101's average pool,
the xlsa17 `res101.mat` feature), L2-normalised here (our choice, as DAZLE normalises its
regions) so one learning rate and margin fit any backbone's feature scale; class semantic
vectors z_c are unit-norm as DeViSE's label vectors and as for DAZLE and ESZSL. M starts at zero: the loss is convex in M, so no
random start is needed and runs differ only through the batch order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.eszsl import holistic_features


def hinge_rank_loss(scores: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Mean over the batch of sum_{c != y} max(0, margin - s_y + s_c).

    `scores` [B, K] cover exactly the classes the loss ranks over (the seen classes) and
    `labels` [B] are column indices into them. Zero exactly when every true class beats every
    other class by at least `margin`.
    """
    true = scores.gather(1, labels[:, None])  # [B, 1]
    violations = (margin - true + scores).clamp_min(0.0)  # [B, K]
    others = torch.ones_like(violations, dtype=torch.bool)
    others[torch.arange(len(labels), device=labels.device), labels] = False  # c != y
    return (violations * others).sum(dim=1).mean()


class DeViSE(nn.Module):
    """Linear visual-semantic embedding: scores [B, C] = normalise(x) M Z^T."""

    def __init__(self, *, class_semantics: Tensor, feature_dim: int, normalize_features: bool = True) -> None:
        super().__init__()
        num_attributes = class_semantics.shape[1]
        self.feature_dim = feature_dim
        self.normalize_features = normalize_features
        self.register_buffer("class_semantics", F.normalize(class_semantics.detach().float(), dim=1))  # [C, A]
        self.M = nn.Parameter(torch.zeros(feature_dim, num_attributes))  # [F, A]

    def embed(self, features: Tensor) -> Tensor:
        """Image embeddings in the semantic space: [B, A]."""
        x = holistic_features(features)
        if x.shape[1] != self.feature_dim:
            raise ValueError(f"expected {self.feature_dim}-dimensional features, got {tuple(features.shape)}")
        if self.normalize_features:
            x = F.normalize(x, dim=1)
        return x @ self.M

    def forward(self, features: Tensor) -> Tensor:
        return self.embed(features) @ self.class_semantics.t()  # [B, C]
