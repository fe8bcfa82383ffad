"""Fixtures of the fault-injection tests: a fault log, a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from faults import PYTHON, cli_env, kill_pids


@pytest.fixture
def fault_log(request):
    """Record what a fault test injected and what it found; HARNESS_FAULTS_REPORT=FILE appends them as
    JSON lines (docs/reliability.md quotes those counts)."""
    entries: list[dict] = []

    def log(**fields) -> None:
        entries.append({"test": request.node.name, **fields})

    yield log
    out = os.environ.get("HARNESS_FAULTS_REPORT")
    if out:
        passed = not (hasattr(request.node, "rep_call") and request.node.rep_call.failed)
        with open(out, "a") as fh:
            for entry in entries:
                fh.write(json.dumps({**entry, "test_passed": passed}, default=str) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store in a tmp folder; start, SIGKILL, restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()

    def start(self, timeout: float = 120) -> None:
        from faults import family

        env = cli_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        cmd = [str(Path(PYTHON).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "artifacts")]
        log = open(self.folder / "server.log", "a")  # noqa: SIM115 - kept open for the server's life
        self.proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pids |= family(self.proc.pid)
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            if self.ready():
                self.pids |= family(self.proc.pid)
                return
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not ready after {timeout} s")

    def ready(self) -> bool:
        """Ready means an API call answers, not only /health."""
        try:
            url = f"{self.url}/api/2.0/mlflow/experiments/search?max_results=1"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and its gunicorn/uvicorn workers, by PID."""
        from faults import family

        if self.proc is not None:
            self.pids |= family(self.proc.pid)
            kill_pids(sorted(self.pids))
            self.proc.wait(10)
            self.proc = None
        self.pids.clear()


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "mlflow-server")
    server.folder.mkdir()
    server.start()
    yield server
    server.kill()
