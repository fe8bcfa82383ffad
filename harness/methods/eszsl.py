"""ESZSL wired to the trainer: one sequential pass accumulates X X^T and X Y, end_epoch solves.

The trainer honours `sampling = "sequential"`: every fit image exactly once, in order, instead
of class-balanced batches (which draw with replacement and would weight images unevenly in the
sums). `default_epochs = 1` because the closed form needs one pass, whatever --epochs says.
"""

from __future__ import annotations

import torch
from torch import Tensor

from baselines.eszsl import ESZSL
from harness.config import TrainConfig
from harness.methods import MethodSpec, register_method


class ESZSLMethod:
    default_epochs = 1
    sampling = "sequential"

    def __init__(self, spec: MethodSpec, config: TrainConfig, device: torch.device) -> None:
        self.module = ESZSL(
            class_semantics=spec.class_semantics,
            seen_classes=spec.seen_classes,
            feature_dim=spec.feature_dim,
            gamma=config.eszsl_gamma,
            lam=config.eszsl_lambda,
        ).to(device)
        self._solved_at = 0  # images in the statistics when V was last solved
        self._epoch_done = False

    def train_step(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """Accumulate the batch; the loss is its squared residual under the last solved V.

        Before the first solve V = 0 and the residual is exactly 1 (Y is +-1): the per-step
        loss of a closed-form method is informational only.
        """
        if self._epoch_done:  # a further epoch re-reads the same images: start the sums afresh
            self.module.reset_statistics()
            self._epoch_done = False
        with torch.no_grad():
            residual = (self.module(features).double()[:, self.module.seen_classes]
                        - self.module.targets(labels)).pow(2).mean()
        self.module.accumulate(features, labels)
        return {"loss": residual.item()}

    def end_epoch(self) -> None:
        self._solve()
        self._epoch_done = True

    def _solve(self) -> None:
        if self.module.num_accumulated and self.module.num_accumulated != self._solved_at:
            self.module.solve()
            self._solved_at = self.module.num_accumulated

    def save_state(self) -> dict:
        # The running sums are not in the module's state_dict (a trained ESZSL is V alone), but a
        # checkpoint taken mid-pass needs them to finish the pass.
        m = self.module
        return {"module": m.state_dict(), "xx": m.xx.clone(), "xy": m.xy.clone(),
                "num_accumulated": m.num_accumulated, "solved_at": self._solved_at, "epoch_done": self._epoch_done}

    def load_state(self, state: dict) -> None:
        m = self.module
        m.load_state_dict(state["module"])
        m.xx.copy_(state["xx"])
        m.xy.copy_(state["xy"])
        m.num_accumulated = int(state["num_accumulated"])
        self._solved_at, self._epoch_done = int(state["solved_at"]), bool(state["epoch_done"])

    @torch.no_grad()
    def scores(self, features: Tensor) -> Tensor:
        # Mid-epoch validation reports (reports_per_epoch > 1) see the fit on the images so far.
        self._solve()
        self.module.eval()
        return self.module(features)

    def prediction_margin(self) -> Tensor | None:
        return None


@register_method("eszsl", ("eszsl_gamma", "eszsl_lambda"))
def build(spec: MethodSpec, config: TrainConfig, device: torch.device) -> ESZSLMethod:
    return ESZSLMethod(spec, config, device)
