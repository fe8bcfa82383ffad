"""Bad input to `python -m harness.search`: one line, exit 2, before Ray starts, nothing written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.search.__main__ import run


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def _fails(argv, capsys, match):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness.search: error: "), err
    assert match in err[0], err[0]
    return err[0]


def test_unreachable_address_is_exit_2_before_anything_starts(workdir, capsys):
    port = _closed_port()
    _fails(["--dataset", "synthetic", "--address", f"127.0.0.1:{port}", "--storage", "s"], capsys,
           f"--address 127.0.0.1:{port}: Ray cluster unreachable")
    assert not (workdir / "s").exists() and not (workdir / "mlflow.db").exists()
    _fails(["--dataset", "synthetic", "--address", "no-port-here"], capsys, "expected HOST:PORT")


def test_unreachable_tracking_server_is_exit_2(workdir, capsys):
    port = _closed_port()
    _fails(["--dataset", "synthetic", "--tracking-uri", f"http://127.0.0.1:{port}", "--storage", "s"], capsys,
           "MLflow server unreachable")
    assert not (workdir / "s").exists()


def test_trials_larger_than_this_machine_fail_before_ray_starts(workdir, capsys):
    import torch

    if torch.cuda.device_count() < 4:
        _fails(["--dataset", "synthetic", "--gpus-per-trial", "4", "--storage", "s"], capsys, "--gpus-per-trial")
    _fails(["--dataset", "synthetic", "--cpus-per-trial", "4096", "--storage", "s"], capsys,
           "--cpus-per-trial 4096: expected at most the")
    assert not (workdir / "s").exists() and not (workdir / "mlflow.db").exists()


def test_bad_options_and_storage(workdir, capsys):
    _fails(["--dataset", "synthetic", "--num-samples", "0"], capsys, "--num-samples")
    _fails(["--dataset", "synthetic", "--gpus-per-trial", "-1"], capsys, "--gpus-per-trial")
    _fails(["--dataset", "synthetic", "--resume", "--storage", str(workdir / "nothing")], capsys, "no search.json")
    _fails(["--dataset", "synthetic", "--resume"], capsys, "--resume: no search of 'synthetic'")
    (workdir / "taken").mkdir()
    (workdir / "taken" / "search.json").write_text("{}")
    _fails(["--dataset", "synthetic", "--storage", "taken"], capsys, "already holds a search")
    _fails(["--dataset", "no-such-dataset", "--storage", "x"], capsys, "--dataset")
    _fails(["--dataset", "synthetic", "--model", "no-such-model", "--storage", "x"], capsys, "--model")
    assert not (workdir / "x").exists()


def test_help_imports_neither_ray_nor_torch():
    """`--help` answers without the heavy imports (the package's modules defer them to the steps)."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "harness.search", "--help"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: python -m harness.search" in out.stdout, out.stderr[-2000:]
    heavy = [line for line in out.stderr.splitlines() if line.split("|")[-1].strip() in ("ray", "torch")]
    assert not heavy, heavy
