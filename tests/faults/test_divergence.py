"""Fault: a trial whose loss becomes NaN / inf (issue 9, part 2).

Guarantees under test:
- harness.trainer.fit raises DivergenceError at the first non-finite loss, naming epoch and step;
- the trainer CLI stops with one line naming the epoch and the step (no traceback);
- in a search, the diverged trial is recorded as FAILED in MLflow with the reason and the step,
  Ray and the searcher see it end, and the search goes on to finish with the other trials.
The search runs through the search module's Python API in a subprocess, with a search space
whose first point is a learning rate of 1e20 (the CLI has no space override, by design: spaces
are plain data in search_spaces/).
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

import pytest

from faults import PYTHON, cli_env, mlflow_records, ray_trials, run_cli, searcher_trials

HUGE_LR = 1e20
DRIVER = textwrap.dedent(f"""
    import sys

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from harness.search import __main__ as search, tune as search_tune
    from harness.search.space import ResolvedSpace

    HUGE = {HUGE_LR!r}


    def resolve_space(model, num_attributes):
        return ResolvedSpace(model, {{"lr": {{"type": "categorical", "choices": [1e-4, HUGE]}}}}, {{"lr": 1e-4}})


    def searcher(plan):
        # the diverging point first, then the paper's configuration
        return OptunaSearch(space=plan.space.distributions(), metric="val_H", mode="max",
                            points_to_evaluate=[{{"lr": HUGE}}, {{"lr": 1e-4}}],
                            sampler=optuna.samplers.TPESampler(seed=0))


    search.resolve_space = resolve_space
    search_tune.searcher = searcher
    sys.exit(search.run(sys.argv[1:]))
""")


def test_fit_raises_divergence_error_naming_epoch_and_step(tiny_synthetic):
    from harness.config import TrainConfig
    from harness.trainer import DivergenceError, fit

    reports = []
    with pytest.raises(DivergenceError) as info:
        fit(TrainConfig(stage="search", lr=HUGE_LR, epochs=3), tiny_synthetic, reporter=reports.append)
    err = info.value
    assert err.epoch == 1 and err.step >= 1
    assert f"epoch {err.epoch}, step {err.step}" in str(err)
    assert not reports, "a pass was reported after the loss had become non-finite"


def test_train_cli_divergence_is_one_line_naming_epoch_and_step(tmp_path):
    r = run_cli("harness.train", "--lr", str(HUGE_LR), "--stage", "search", "--epochs", "2", cwd=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode not in (0, -9), r.stderr[-2000:]
    assert "Traceback" not in r.stderr, "a traceback instead of one line:\n" + r.stderr[-2000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("harness.train: error: ") and re.search(r"epoch \d+, step \d+", lines[0]), lines[0]


@pytest.mark.slow
def test_diverging_trial_is_recorded_failed_and_the_search_goes_on(tmp_path, fault_log):
    driver = tmp_path / "diverge_search.py"
    driver.write_text(DRIVER)
    storage = tmp_path / "search"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [PYTHON, str(driver), "--dataset", "synthetic", "--model", "dazle", "--num-samples", "2", "--epochs", "2",
         "--final-seeds", "0", "--max-concurrent", "1", "--cpus-per-trial", "1", "--storage", str(storage),
         "--tracking-uri", uri, "--json"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    ray = ray_trials(storage / "dazle")
    diverged = [t for t in ray.values() if t.config.get("lr") == HUGE_LR]
    healthy = [t for t in ray.values() if t.config.get("lr") != HUGE_LR]
    assert len(diverged) == 1 and len(healthy) == 1, {t.trial_id: t.config for t in ray.values()}
    bad = diverged[0]
    assert bad.diverged and bad.iterations == 1, "the diverged trial was not stopped at its first report"
    assert healthy[0].status == "TERMINATED" and healthy[0].iterations == 2 and not healthy[0].diverged

    runs = {r.trial_id: r for r in mlflow_records(uri) if r.kind == "trial"}
    failed = runs[bad.trial_id]
    assert failed.status == "FAILED", failed.status
    assert failed.tags.get("failure_reason") == "diverged"
    step, epoch = failed.tags.get("diverged_step"), failed.tags.get("diverged_epoch")
    assert epoch == "1" and step and step.isdigit()
    assert re.search(rf"loss became (nan|inf|-inf) at epoch 1, step {step}\b", failed.tags.get("error", "")), \
        failed.tags.get("error")
    assert "val_H" not in failed.steps, "validation metrics were logged for a diverged model"
    assert runs[healthy[0].trial_id].status == "FINISHED"

    opt = searcher_trials(storage / "dazle")
    assert sorted(t.state for t in opt) == ["COMPLETE", "COMPLETE"], [(t.params, t.state) for t in opt]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trial_counts"].get("diverged") == 1, summary["trial_counts"]
    assert summary["best_trial"] == healthy[0].trial_id
    fault_log(fault="diverging trial (lr 1e20) in a search", injected=1, recovered=1,
              diverged_step=int(step), search_exit=proc.returncode, trial_counts=summary["trial_counts"])
