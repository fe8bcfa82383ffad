"""A search folder written by the code before `harness/search/` was a package still resumes.

tests/fixtures/search-folder-v0.1.tar.gz was written by `python -m harness.search` at commit 3a82480
(modules harness/search_*.py): `--dataset synthetic --model dazle --num-samples 3 --epochs 2
--final-seeds 1 --max-concurrent 1 --cpus-per-trial 1 --seed 0 --storage /tmp/searchfx/v0/search
--tracking-uri sqlite:////tmp/searchfx/v0/mlflow.db`, the driver SIGKILLed once Ray's snapshot held
one finished trial (Ray's and TensorBoard's logs stripped, the SQLite store vacuumed). Ray Tune
pickled its scheduler and callbacks as `harness.search_tune.*`; the resume must load them, finish the
search without re-running the finished trial, and leave one MLflow run per trial.

The folder records absolute paths (search.json's tracking URI, the experiments' artifact locations,
the storage path and the callback's tracking URI inside Ray's pickles); they are rewritten to the
test's folder first, as a user moving a search folder would need too.
"""

from __future__ import annotations

import io
import json
import pickletools
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from faults import check_search_records, cli_env, mlflow_records, ray_trials, run_cli

from harness.search.legacy import install_aliases

pytestmark = pytest.mark.slow
FIXTURE = Path(__file__).parent / "fixtures" / "search-folder-v0.1.tar.gz"
OLD_ROOT = "/tmp/searchfx/v0"
NUM_SAMPLES = 3
FINISHED_TRIAL = "ab4c5ffd"  # TERMINATED in Ray's snapshot at the kill


def _rewrite_pickle(data: bytes, old: str, new: str) -> bytes:
    """The same pickle with `old` replaced by `new` in every string (frames dropped: they are hints)."""
    out = io.BytesIO()
    ops = list(pickletools.genops(data))
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        if op.name == "FRAME":
            continue
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8") and old in arg:
            raw = arg.replace(old, new).encode("utf-8")
            out.write(b"\x8d" + len(raw).to_bytes(8, "little") + raw)  # BINUNICODE8: any length
            continue
        out.write(data[pos:end])
    return out.getvalue()


def _unpack(root: Path) -> tuple[Path, str]:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(root, filter="data")
    new = str(root)
    manifest = root / "search" / "search.json"
    manifest.write_text(manifest.read_text().replace(OLD_ROOT, new))
    with sqlite3.connect(root / "mlflow.db") as con:
        con.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (OLD_ROOT, new))
        con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (OLD_ROOT, new))
    for path in (root / "search" / "dazle").glob("*"):
        if path.is_file() and path.read_bytes()[:1] == b"\x80":  # tuner.pkl, search_gen_state-*.json
            path.write_bytes(_rewrite_pickle(path.read_bytes(), OLD_ROOT, new))
    return root / "search", f"sqlite:///{root / 'mlflow.db'}"


def test_rewritten_pickles_name_the_old_modules_and_no_old_path(tmp_path):
    storage, _ = _unpack(tmp_path)
    tuner = (storage / "dazle" / "tuner.pkl").read_bytes()
    assert b"harness.search_tune" in tuner  # the folder really was written before the move
    for path in storage.rglob("*"):
        assert not path.is_file() or OLD_ROOT.encode() not in path.read_bytes(), path


def test_search_folder_written_before_the_package_move_resumes(tmp_path):
    storage, uri = _unpack(tmp_path)
    # Reading the old experiment state here needs the old module names, as the driver's restore
    # does (the driver, a separate process below, installs its own).
    install_aliases()
    before_runs = {r.run_id: r for r in mlflow_records(uri)}
    before_ray = ray_trials(storage / "dazle")
    assert before_ray[FINISHED_TRIAL].status == "TERMINATED"
    finished = {r.run_id: r for r in before_runs.values() if r.trial_id == FINISHED_TRIAL}
    assert len(finished) == 1 and next(iter(finished.values())).status == "FINISHED"

    resumed = run_cli("harness.search", "--dataset", "synthetic", "--storage", storage, "--resume", "--json",
                      cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming" in resumed.stderr
    summary = json.loads(resumed.stdout.splitlines()[-1])
    assert summary["trial_counts"] and sum(summary["trial_counts"].values()) == NUM_SAMPLES
    assert len(summary["final_runs"]) == 1

    check_search_records(storage, uri, NUM_SAMPLES)  # one FINISHED run per Ray trial, no duplicates
    after_ray = ray_trials(storage / "dazle")
    assert after_ray[FINISHED_TRIAL].iterations == before_ray[FINISHED_TRIAL].iterations, "finished trial re-ran"
    after_runs = {r.run_id: r for r in mlflow_records(uri)}
    for run_id, before in finished.items():
        after = after_runs[run_id]
        assert after.status == "FINISHED" and after.tags.get("attempts") == before.tags.get("attempts")
        assert after.metrics == before.metrics and after.steps == before.steps
    assert [r.kind for r in after_runs.values()].count("search") == 1
    assert not list(tmp_path.glob("mlruns")), "artifacts went to ./mlruns"


def test_old_pickles_load_through_the_aliases_onto_the_package(tmp_path):
    """The old folder's tuner.pkl names harness.search_tune; with the aliases it loads the package's classes.

    No file is left at the old paths. (In a checkout whose venv holds an editable install of an
    older tree, that tree could answer the old names; the aliases take precedence over it.)
    """
    repo = Path(__file__).resolve().parents[1]
    assert not list((repo / "harness").glob("search_*.py"))
    storage, _ = _unpack(tmp_path)
    script = (
        "import pickle, sys\n"
        "from harness.search.legacy import install_aliases\n"
        "install_aliases()\n"
        "state = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "callbacks = state['_run_config'].callbacks\n"
        "print(sorted(f'{type(c).__module__}.{type(c).__name__}' for c in callbacks))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(storage / "dazle" / "tuner.pkl")], cwd=tmp_path,
                         env=cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "['harness.search.tune.ProgressCallback', 'harness.search.tune.TrialRunsCallback']" in out.stdout
