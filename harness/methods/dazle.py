"""DAZLE wired to the trainer: the model, the paper's loss (eq. 12) and RMSprop as the authors."""

from __future__ import annotations

import torch
from torch import Tensor

from harness.config import TrainConfig
from harness.methods import MethodSpec, load_module_and_optimizer, module_and_optimizer_state, register_method
from models.dazle import DAZLE
from models.losses import dazle_loss


class DAZLEMethod:
    default_epochs = None

    def __init__(self, spec: MethodSpec, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.module = DAZLE(
            class_semantics=spec.class_semantics,
            attribute_semantics=spec.attribute_semantics,
            seen_classes=spec.seen_classes,
            unseen_classes=spec.unseen_classes,
            feature_dim=spec.feature_dim,
            dense_attention=config.dense_attention,
            attribute_attention=config.attribute_attention,
            trainable_semantics=config.trainable_semantics,
        ).to(device)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.RMSprop(
            params, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
        )

    def _autocast(self, features: Tensor):
        """bf16 autocast when asked (--amp bf16): the GEMMs in bf16, softmax and loss in fp32."""
        return torch.autocast(features.device.type, dtype=torch.bfloat16, enabled=self.config.amp == "bf16")

    def train_step(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        self.module.train()
        with self._autocast(features):
            out = self.module(features)
        m = self.module
        total, ce, cal = dazle_loss(
            out.scores.float(),
            labels,
            margin=m.calibration_margin,
            seen_classes=m.seen_classes,
            unseen_classes=m.unseen_classes,
            lam=self.config.lam,
            calibrate=self.config.self_calibration,
        )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return {"loss": total.item(), "loss_ce": ce.item(), "loss_cal": cal.item()}

    def end_epoch(self) -> None:
        pass

    def save_state(self) -> dict:
        return module_and_optimizer_state(self.module, self.optimizer)

    def load_state(self, state: dict) -> None:
        load_module_and_optimizer(self.module, self.optimizer, state)

    @torch.no_grad()
    def scores(self, features: Tensor) -> Tensor:
        self.module.eval()
        with self._autocast(features):
            return self.module(features).scores.float()

    @torch.no_grad()
    def attention(self, features: Tensor) -> Tensor:
        self.module.eval()
        with self._autocast(features):
            return self.module(features).attention.float()

    def prediction_margin(self) -> Tensor | None:
        # The margin belongs to self-calibration; the seen-only variant predicts on raw scores.
        return self.module.calibration_margin if self.config.self_calibration else None


@register_method(
    "dazle",
    ("lam", "num_attributes", "lr", "weight_decay", "momentum", "dense_attention", "attribute_attention",
     "self_calibration", "trainable_semantics"),
)
def build(spec: MethodSpec, config: TrainConfig, device: torch.device) -> DAZLEMethod:
    return DAZLEMethod(spec, config, device)
