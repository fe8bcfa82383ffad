"""Holistic-feature baselines (ESZSL, DeViSE), pure PyTorch. Nothing here imports from the harness."""

from baselines.devise import DeViSE, hinge_rank_loss
from baselines.eszsl import ESZSL, eszsl_closed_form, eszsl_objective, holistic_features

__all__ = ["DeViSE", "ESZSL", "eszsl_closed_form", "eszsl_objective", "hinge_rank_loss", "holistic_features"]
