"""Shared fixtures: small synthetic datasets built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Tests train tiny models on a busy 2-core machine, where threads waiting on each other cost more
# than they bring (one Adam step ran 12x slower with 2 threads); CLIs started by tests inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_synthetic():
    """A smaller `synthetic` for fast tests (same generator, fewer images)."""
    from harness.data import synthetic

    return synthetic.load("synthetic", seed=0, images_per_class=15)
