"""DeViSE wired to the trainer: hinge rank loss over the seen classes, Adam at the config's lr.

Adam rather than the paper's (distributed) SGD: the map is linear and the loss convex, and Adam
makes one learning-rate range work across feature scales and class counts without a schedule.
Class-balanced batches and the dataset's epochs, exactly as DAZLE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from baselines.devise import DeViSE, hinge_rank_loss
from harness.config import TrainConfig
from harness.methods import MethodSpec, load_module_and_optimizer, module_and_optimizer_state, register_method


class DeViSEMethod:
    default_epochs = None

    def __init__(self, spec: MethodSpec, config: TrainConfig, device: torch.device) -> None:
        self.margin = config.margin
        self.module = DeViSE(class_semantics=spec.class_semantics, feature_dim=spec.feature_dim).to(device)
        seen = spec.seen_classes.long()
        column = torch.full((spec.class_semantics.shape[0],), -1, dtype=torch.long)
        column[seen] = torch.arange(len(seen))
        self.seen = seen.to(device)
        self.seen_column = column.to(device)  # class id -> position among the seen classes
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=config.lr)

    def train_step(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        self.module.train()
        columns = self.seen_column[labels]
        if (columns < 0).any():
            raise ValueError("DeViSE is trained on seen classes only; got an image of an unseen class")
        scores = self.module(features)[:, self.seen]  # rank among the seen classes only
        loss = hinge_rank_loss(scores, columns, self.margin)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def end_epoch(self) -> None:
        pass

    def save_state(self) -> dict:
        return module_and_optimizer_state(self.module, self.optimizer)

    def load_state(self, state: dict) -> None:
        load_module_and_optimizer(self.module, self.optimizer, state)

    @torch.no_grad()
    def scores(self, features: Tensor) -> Tensor:
        self.module.eval()
        return self.module(features)

    def prediction_margin(self) -> Tensor | None:
        return None


@register_method("devise", ("lr", "margin"))
def build(spec: MethodSpec, config: TrainConfig, device: torch.device) -> DeViSEMethod:
    return DeViSEMethod(spec, config, device)
