"""Shared fixtures: small synthetic datasets built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def tiny_synthetic():
    """A smaller `synthetic` for fast tests (same generator, fewer images)."""
    from harness.data import synthetic

    return synthetic.load("synthetic", seed=0, images_per_class=15)
