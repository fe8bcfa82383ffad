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


OPT_IN_MARKERS = ("load", "long")  # tests CI leaves out: they run only when -m names them


def pytest_collection_modifyitems(config, items):
    """`load` and `long` tests run only when `-m` names them (pytest -m load, -m long): CI's time
    budget leaves them out, and docs/reliability.md records their last runs."""
    chosen = config.getoption("-m") or ""
    for item in items:
        for name in OPT_IN_MARKERS:
            if item.get_closest_marker(name) and name not in chosen:
                item.add_marker(pytest.mark.skip(reason=f"a -m {name} test: run with pytest -m {name}"))


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
