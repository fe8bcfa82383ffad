"""Class-balanced batches, as the authors draw them.

Each batch takes min(#classes, batch_size) distinct classes at random and
max(batch_size // #classes, 1) images of each, so rare classes are seen as often as big ones
(with 50 seen classes and batch 50: one image from each of 50 classes).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ClassBalancedSampler:
    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.classes = np.unique(self.labels)
        self.members = [np.flatnonzero(self.labels == c) for c in self.classes]
        self.classes_per_batch = min(len(self.classes), batch_size)
        self.per_class = max(batch_size // len(self.classes), 1)
        self.rng = np.random.default_rng(seed)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.labels) // self.batch_size)

    def next_batch(self) -> np.ndarray:
        """Positions into `labels` (not image ids) of one batch."""
        chosen = self.rng.choice(len(self.classes), size=self.classes_per_batch, replace=False)
        parts = []
        for k in chosen:
            members = self.members[k]
            take = min(self.per_class, len(members))
            parts.append(members[self.rng.choice(len(members), size=take, replace=False)])
        return np.concatenate(parts)

    def epoch(self) -> Iterator[np.ndarray]:
        for _ in range(self.steps_per_epoch()):
            yield self.next_batch()
