"""Class-balanced batches, as the authors draw them.

Each batch takes min(#classes, batch_size) distinct classes at random and
max(batch_size // #classes, 1) images of each, so rare classes are seen as often as big ones
(with 50 seen classes and batch 50: one image from each of 50 classes).

For a checkpoint mid-epoch the sampler keeps the random state it had when the epoch began; with
the number of batches the trainer consumed (not how many the prefetcher drew ahead), that fixes
every later batch: `load_state` rewinds to the epoch's start and redraws the consumed batches
(index draws only, no feature read), so a restored fit sees exactly the batches it would have.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

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
        self._epoch_start = copy.deepcopy(self.rng.bit_generator.state)

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

    def epoch(self, start_step: int = 0) -> Iterator[np.ndarray]:
        """The batches of one epoch after its first `start_step` (0: a new epoch; the random state
        at its start is kept now, in the caller's thread, not when a prefetcher starts drawing)."""
        if start_step == 0:
            self._epoch_start = copy.deepcopy(self.rng.bit_generator.state)
        return self._draw(self.steps_per_epoch() - start_step)

    def _draw(self, count: int) -> Iterator[np.ndarray]:
        for _ in range(count):
            yield self.next_batch()

    def state(self) -> dict[str, Any]:
        """The random state at the start of the current epoch (JSON-serialisable)."""
        return {"epoch_start_rng": copy.deepcopy(self._epoch_start)}

    def load_state(self, state: dict[str, Any], consumed: int) -> None:
        """Back to where the trainer was: the epoch's start state, then `consumed` batches drawn."""
        self.rng.bit_generator.state = copy.deepcopy(state["epoch_start_rng"])
        self._epoch_start = copy.deepcopy(state["epoch_start_rng"])
        for _ in range(consumed):
            self.next_batch()
