"""Load: many trials at once against one tracking store, and two searches at once (issue 16).

CI size (`slow`, one run for both cases): 24 short trials with 8 at once on SQLite, as two searches
at once (12 trials, 4 at once each) into one SQLite store and one feature cache; the PostgreSQL-backed
server variant is in tests/test_stack.py (24 trials, 8 at once, one search). Outside CI (`-m load`): 100+ trials with 16 at once. Each run counts
what every search must keep: every Ray trial ended, one MLflow run per trial with every pass it ran
logged once, none left RUNNING, the searcher's trials COMPLETE, and no "database is locked"
reaching the user. The figures (trials, concurrency, store, seconds, metric values written per
second) go to HARNESS_FAULTS_REPORT and docs/reliability.md.

Trials ask for a quarter of a CPU (`--cpus-per-trial 0.25`) so that 8 or 16 run at once on the
2-core CI machine: the point is the concurrency against the store, not the training.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from faults import PYTHON, Spawned, check_every_trial, cli_env, make_tiny_cub

SEARCH = "harness.search"


@pytest.fixture(scope="module")
def tiny_cub_cache(tmp_path_factory):
    """The tiny xlsa17 CUB with its res101 features imported into an LMDB cache (absolute paths)."""
    import subprocess

    root = tmp_path_factory.mktemp("cub")
    cub = make_tiny_cub(root / "cub")
    cache = root / "cache"
    out = subprocess.run([PYTHON, "-m", "harness.features", "import-res101", "--dataset", "cub", "--file",
                          str(cub.res_file), "--cache-dir", str(cache)], env=cli_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return cub, cache


def _search_args(cub, cache, num_samples: int, concurrent: int, seed: int) -> list[str]:
    return ["--dataset", "cub", "--data-root", str(cub.root), "--word-vectors", str(cub.word_vectors),
            "--cache-dir", str(cache), "--model", "dazle", "--num-samples", str(num_samples), "--epochs", "3",
            "--final-seeds", "0", "--max-concurrent", str(concurrent), "--cpus-per-trial", "0.25",
            "--max-failures", "2", "--seed", str(seed)]


def _metric_values(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return int(con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0])


def _run_searches(tmp_path, cub, cache, plans: list[tuple[int, int]], fault_log, label: str) -> None:
    """Run one search per (num_samples, concurrent) at once into one SQLite store; check and log each."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    searches = []
    for i, (num, concurrent) in enumerate(plans):
        storage = tmp_path / f"search{i}"
        searches.append((storage, num, concurrent, Spawned(SEARCH, *_search_args(cub, cache, num, concurrent, i),
                                                           "--storage", storage, "--tracking-uri", uri,
                                                           cwd=tmp_path, name=f"search{i}")))
        if i == 0 and len(plans) > 1:
            time.sleep(5)  # the first driver creates the store's schema (STACK.md: racing creators crash)
    try:
        codes = [s.wait(3000) for *_, s in searches]
    finally:
        for *_, s in searches:
            s.cleanup()
    seconds = time.monotonic() - started
    for (storage, num, concurrent, s), code in zip(searches, codes, strict=True):
        assert code == 0, s.stderr()[-4000:]
        assert "database is locked" not in s.stderr() + s.stdout(), s.stderr()[-3000:]
        counts = check_every_trial(storage, uri, num)
        fault_log(load=label, store="sqlite", trials=num, concurrent=concurrent, searches_at_once=len(plans),
                  seconds=round(seconds, 1), **counts)
    values = _metric_values(tmp_path / "mlflow.db")
    fault_log(load=label, store="sqlite", trials=sum(n for n, _ in plans), seconds=round(seconds, 1),
              metric_values=values, metric_values_per_s=round(values / seconds, 1), lost=0)


@pytest.mark.slow
def test_24_trials_8_at_once_in_two_searches_into_one_store_and_one_cache(tmp_path, tiny_cub_cache, fault_log):
    """CI size, one run for both cases (CI time): two searches at once, 12 trials with 4 at once each."""
    _run_searches(tmp_path, *tiny_cub_cache, [(12, 4), (12, 4)], fault_log,
                  "CI: 24 trials, 8 at once, two searches at once")


@pytest.mark.load
def test_100_trials_16_at_once_on_sqlite(tmp_path, tiny_cub_cache, fault_log):
    _run_searches(tmp_path, *tiny_cub_cache, [(100, 16)], fault_log, "load: 100 trials, 16 at once")
