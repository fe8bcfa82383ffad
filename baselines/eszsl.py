"""ESZSL: "An embarrassingly simple approach to zero-shot learning" (Romera-Paredes & Torr, ICML 2015).

With X [F, N] holistic image features, Y [N, Cs] in {-1, 1} (+1 at the image's seen class, -1
elsewhere, as in the paper) and S [A, Cs] the seen classes' semantic vectors, ESZSL minimises

    ||X^T V S - Y||_F^2 + gamma ||V S||_F^2 + lambda ||X^T V||_F^2 + gamma lambda ||V||_F^2

over V [F, A], whose minimiser is the closed form

    V = (X X^T + gamma I)^-1 X Y S^T (S S^T + lambda I)^-1.

A class c, seen or unseen, is scored x^T V s_c. The solution needs X only through X X^T [F, F]
and X Y [F, Cs], so `ESZSL` accumulates those two sums batch by batch (one pass over the fit set,
any batch order) and solves in float64 once the pass is done.

Conventions shared with DAZLE and the GBU benchmark: the holistic feature of an image is the mean
of its region map (ResNet-101's average pool, i.e. exactly the xlsa17 `res101.mat` feature; an
imported [F, 1] map is used as is), not normalised; class semantic vectors are L2-normalised
(xlsa17's `att` columns already are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def holistic_features(features: Tensor) -> Tensor:
    """[B, F] image features from region maps [B, F, R] or [B, F, H, W] (mean over regions).

    [B, F] input is returned unchanged, and an [B, F, 1] map (imported holistic features) is
    its single region.
    """
    if features.dim() == 2:
        return features
    if features.dim() == 4:
        features = features.flatten(2)  # [B, F, H, W] -> [B, F, R]
    if features.dim() != 3:
        raise ValueError(f"expected features [B, F], [B, F, R] or [B, F, H, W], got {tuple(features.shape)}")
    return features.mean(dim=2)  # [B, F]


class ESZSL(nn.Module):
    """The ESZSL bilinear model with streaming sufficient statistics.

    `accumulate` adds a batch to X X^T and X Y; `solve` computes V from the sums so far;
    `forward` scores every class with the last solved V (zeros before the first solve).
    V is a buffer, so a checkpoint of this module is the trained model.
    """

    def __init__(
        self,
        *,
        class_semantics: Tensor,
        seen_classes: Tensor,
        feature_dim: int,
        gamma: float = 1.0,
        lam: float = 1.0,
    ) -> None:
        super().__init__()
        if gamma <= 0 or lam <= 0:
            raise ValueError(f"gamma and lambda must be positive, got {gamma} and {lam}")
        num_classes, num_attributes = class_semantics.shape
        self.gamma = float(gamma)
        self.lam = float(lam)
        self.feature_dim = feature_dim
        z = F.normalize(class_semantics.detach().double(), dim=1)  # [C, A], rows = s_c
        seen = seen_classes.detach().long().clone()
        column = torch.full((num_classes,), -1, dtype=torch.long)
        column[seen] = torch.arange(len(seen))  # class id -> column of Y, -1 for unseen classes
        self.register_buffer("class_semantics", z.float())
        self.register_buffer("seen_classes", seen)
        self.register_buffer("seen_column", column)
        self.register_buffer("V", torch.zeros(feature_dim, num_attributes))  # [F, A]
        # Sufficient statistics: transient (not in state_dict), float64 so that long sums of
        # 2048-dimensional outer products stay exact enough for the solve.
        self.register_buffer("xx", torch.zeros(feature_dim, feature_dim, dtype=torch.float64), persistent=False)
        self.register_buffer("xy", torch.zeros(feature_dim, len(seen), dtype=torch.float64), persistent=False)
        self.register_buffer("_seen_z64", z[seen], persistent=False)  # [Cs, A] = S^T
        self.num_accumulated = 0

    def reset_statistics(self) -> None:
        self.xx.zero_()
        self.xy.zero_()
        self.num_accumulated = 0

    def targets(self, labels: Tensor) -> Tensor:
        """Y rows [B, Cs] in {-1, 1}; raises on a label that is not a seen class."""
        columns = self.seen_column[labels]
        if (columns < 0).any():
            raise ValueError("ESZSL is fitted on seen classes only; got an image of an unseen class")
        y = torch.full((len(labels), self.xy.shape[1]), -1.0, dtype=torch.float64, device=labels.device)
        y[torch.arange(len(labels), device=labels.device), columns] = 1.0
        return y

    @torch.no_grad()
    def accumulate(self, features: Tensor, labels: Tensor) -> None:
        """Add one batch to X X^T and X Y (the columns of X are the batch's images)."""
        x = holistic_features(features).double()  # [B, F]
        self.xx += x.t() @ x  # [F, F]
        self.xy += x.t() @ self.targets(labels)  # [F, Cs]
        self.num_accumulated += len(x)

    @torch.no_grad()
    def solve(self) -> Tensor:
        """V = (X X^T + gamma I)^-1 X Y S^T (S S^T + lambda I)^-1 from the statistics so far."""
        s_t = self._seen_z64  # [Cs, A]
        eye_f = torch.eye(self.feature_dim, dtype=torch.float64, device=self.xx.device)
        eye_a = torch.eye(s_t.shape[1], dtype=torch.float64, device=self.xx.device)
        rhs = self.xy @ s_t  # X Y S^T: [F, A]
        left = torch.linalg.solve(self.xx + self.gamma * eye_f, rhs)  # (X X^T + gamma I)^-1 X Y S^T
        # Right-multiplying by the inverse of a symmetric matrix: solve on the transpose.
        v = torch.linalg.solve(s_t.t() @ s_t + self.lam * eye_a, left.t()).t()  # [F, A]
        self.V.copy_(v.to(self.V.dtype))
        return v

    def forward(self, features: Tensor) -> Tensor:
        """[B, C] scores x^T V s_c for every class c."""
        x = holistic_features(features).to(self.V.dtype)
        return x @ self.V @ self.class_semantics.t()


def eszsl_objective(
    x: Tensor, y: Tensor, s: Tensor, v: Tensor, gamma: float, lam: float
) -> Tensor:
    """The regularised objective for X [F, N], Y [N, Cs], S [A, Cs], V [F, A] (for tests and checks)."""
    vs = v @ s  # [F, Cs]
    xv = x.t() @ v  # [N, A]
    return (
        (x.t() @ vs - y).pow(2).sum()
        + gamma * vs.pow(2).sum()
        + lam * xv.pow(2).sum()
        + gamma * lam * v.pow(2).sum()
    )


def eszsl_closed_form(x: Tensor, y: Tensor, s: Tensor, gamma: float, lam: float) -> Tensor:
    """The batch closed form for X [F, N], Y [N, Cs], S [A, Cs]: V [F, A]."""
    eye_f = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    eye_a = torch.eye(s.shape[0], dtype=x.dtype, device=x.device)
    left = torch.linalg.solve(x @ x.t() + gamma * eye_f, x @ y @ s.t())
    return torch.linalg.solve(s @ s.t() + lam * eye_a, left.t()).t()
