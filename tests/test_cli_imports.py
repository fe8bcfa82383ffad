"""Every CLI answers --help without importing ray or torch (a second, not ten), checked the way a
user would see it: `python -X importtime -m <cli> --help` in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

CLIS = ("harness.search", "harness.reproduce", "harness.train", "harness.compare", "harness.features")
HEAVY = re.compile(r"\|\s+(ray|torch)$", re.MULTILINE)


@pytest.mark.parametrize("cli", CLIS)
def test_help_imports_neither_ray_nor_torch(cli):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", cli, "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout
    assert HEAVY.findall(r.stderr) == [], f"{cli} --help imported {HEAVY.findall(r.stderr)}"
