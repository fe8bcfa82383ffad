"""Fault: the disk of the search folder and of MLflow's artifacts fills mid-search (issue 16).

Both folders live on a small tmpfs (mounting needs root: the test skips otherwise); once a trial is
mid-way, a filler file takes the disk below the reserve the search keeps (HARNESS_MIN_FREE_MB).
Guarantees under test: the search stops with one error line naming the folder, the reserve and
the --resume command (exit 2); no MLflow run is left RUNNING (the interrupted ones are KILLED);
nothing in the search folder is half-written (every JSON file Tune and the harness wrote parses);
once space is freed, `--resume` completes the search with nothing lost or duplicated in Ray's
results, Optuna's trials and MLflow's runs, the interrupted trial continuing from its checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from faults import (
    Spawned,
    check_search_records,
    cli_env,
    mlflow_records,
    run_cli,
    try_mlflow_records,
    wait_until,
)

# A minute or more: outside CI's time budget, run with pytest -m long (docs/reliability.md).
pytestmark = [pytest.mark.slow, pytest.mark.long, pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")]
SEARCH = "harness.search"
NUM_SAMPLES, EPOCHS = 3, 30
DISK_MB, RESERVE_MB, LEFT_MB = 24, 8, 4
ENV = {"HARNESS_MIN_FREE_MB": str(RESERVE_MB), "HARNESS_CHECKPOINT_INTERVAL_S": "0.5"}


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}M", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk, leave_bytes: int) -> int:
    """Write a filler file until the disk has about `leave_bytes` free; returns its size."""
    written = 0
    with open(disk / "filler", "wb") as fh:
        while shutil.disk_usage(disk).free > leave_bytes + 2**20:
            fh.write(b"\0" * 2**20)
            fh.flush()
            written += 2**20
    return written


def _half_written(folder) -> list[str]:
    """JSON files (and JSON-lines result files) under `folder` that do not parse."""
    bad = []
    for path in folder.rglob("*.json"):
        if path.read_bytes()[:1] == b"\x80":  # Tune names its searcher pickle search_gen_state-*.json
            continue
        text = path.read_text(errors="replace")
        try:
            if path.name == "result.json":
                [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                json.loads(text)
        except ValueError:
            bad.append(f"{path.relative_to(folder)} ({len(text)} bytes)")
    return bad


def test_a_full_disk_stops_the_search_with_one_line_and_it_resumes(tmp_path, small_disk, fault_log):
    storage = small_disk / "search"
    (small_disk / "mlartifacts").mkdir()
    (tmp_path / "mlartifacts").symlink_to(small_disk / "mlartifacts")  # MLflow's artifacts, beside the store
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search = Spawned(SEARCH, "--dataset", "synthetic", "--model", "dazle", "--num-samples", str(NUM_SAMPLES),
                     "--epochs", str(EPOCHS), "--final-seeds", "1", "--max-concurrent", "1", "--cpus-per-trial", "1",
                     "--seed", "0", "--storage", storage, "--tracking-uri", uri, cwd=tmp_path, name="search",
                     env=cli_env(ENV))
    try:
        def mid_trial():
            if not (storage / "search.json").exists():
                return None
            runs = try_mlflow_records(uri)
            return any(r.kind == "trial" and r.status == "RUNNING" and "val_H" in r.metrics for r in runs)

        wait_until(mid_trial, 420, "a trial mid-way", interval=0.3, spawned=search)
        filled = _fill(small_disk, LEFT_MB * 2**20)
        code = search.wait(300)
    finally:
        search.cleanup()

    err_lines = [line for line in search.stderr().splitlines() if "error:" in line]
    assert code == 2, search.stderr()[-3000:]
    assert len(err_lines) == 1, err_lines
    assert str(storage) in err_lines[0] and "--resume" in err_lines[0] and "MB free" in err_lines[0], err_lines
    assert "Traceback" not in search.stderr()
    runs = mlflow_records(uri)
    assert not [r for r in runs if r.status == "RUNNING"], [(r.name, r.status) for r in runs]
    killed = [r for r in runs if r.status == "KILLED"]
    assert killed, [(r.name, r.status) for r in runs]
    assert not _half_written(storage), _half_written(storage)
    before = {"mlflow_trial_runs": len([r for r in runs if r.kind == "trial"]),
              "finished": len([r for r in runs if r.kind == "trial" and r.status == "FINISHED"]),
              "killed": len(killed)}
    fault_log(fault="search folder and artifact disk full (tmpfs)", injected=1, phase="at the stop", exit_code=code,
              filler_mb=filled // 2**20, error_line=err_lines[0][:200], **before, half_written_files=0,
              mlflow_running=0)

    (small_disk / "filler").unlink()  # space freed
    resumed = run_cli(SEARCH, "--dataset", "synthetic", "--storage", storage, "--resume", cwd=tmp_path,
                      env=cli_env(ENV), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    counts = check_search_records(storage, uri, NUM_SAMPLES)
    assert not _half_written(storage)
    resumed_trials = [r for r in mlflow_records(uri) if r.kind == "trial" and r.tags.get("resumed_from_step")]
    fault_log(fault="disk full, space freed, then --resume", injected=0, recovered=1, phase="after --resume",
              after=counts, trials_resumed_from_checkpoint=len(resumed_trials), lost=0, duplicated=0,
              left_running=0)
