"""harness.tracking against a real SQLite MLflow store in a temp folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import tracking
from harness.errors import InputError


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to ./mlruns by mistake would show up here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, tracking.experiment_id(uri, "test-exp")


def test_experiment_is_created_once_with_artifacts_next_to_the_database(store, tmp_path):
    uri, exp = store
    assert tracking.experiment_id(uri, "test-exp") == exp
    location = tracking._client(uri).get_experiment(exp).artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()
    ref = tracking.start_run(uri, exp, "r")
    tracking.log_json(ref, {"a": 1}, "config.json")
    tracking.end_run(ref)
    assert not (tmp_path / "mlruns").exists()
    assert json.loads(next((tmp_path / "mlartifacts").rglob("config.json")).read_text()) == {"a": 1}


def test_children_are_found_by_tag_and_orphans_are_ended(store):
    uri, exp = store
    parent = tracking.start_run(uri, exp, "search", params={"lambda": 0.1}, tags={"kind": "search"})
    a = tracking.start_run(uri, exp, "a", tags={"ray_trial_id": "t1"}, parent=parent)
    b = tracking.start_run(uri, exp, "b", tags={"ray_trial_id": "t2"}, parent=parent)
    tracking.start_run(uri, exp, "other", tags={"ray_trial_id": "t1"})  # not a child
    tracking.end_run(b, "FINISHED")
    found = tracking.child_runs(uri, exp, parent.run_id, {"ray_trial_id": "t1"})
    assert [r.info.run_id for r in found] == [a.run_id]
    assert {r.info.run_id for r in tracking.child_runs(uri, exp, parent.run_id)} == {a.run_id, b.run_id}

    assert tracking.end_orphans(uri, exp, parent.run_id, reason="test") == [a.run_id]
    assert tracking.run_status(a) == "KILLED"
    assert tracking.run_status(b) == "FINISHED"
    assert tracking.run_status(parent) == "RUNNING"  # only children are touched
    tracking.reopen_run(a)
    assert tracking.run_status(a) == "RUNNING"
    tags = a.client.get_run(a.run_id).data.tags
    assert "ended_by" not in tags and tags["previously_ended_by"] == "test"


def test_metrics_steps_and_non_finite_values(store):
    uri, exp = store
    ref = tracking.start_run(uri, exp, "m")
    assert tracking.max_metric_step(ref, "val_H") is None
    for epoch in (1, 2, 3):
        tracking.log_metrics(ref, {"val_H": 0.1 * epoch, "loss": float("nan")}, step=epoch)
    assert tracking.max_metric_step(ref, "val_H") == 3
    run = ref.client.get_run(ref.run_id)
    assert "loss" not in run.data.metrics  # NaN is not logged
    assert [m.step for m in ref.client.get_metric_history(ref.run_id, "val_H")] == [1, 2, 3]


def test_check_tracking_fails_fast_with_one_line(tmp_path):
    with pytest.raises(InputError, match="unreachable"):
        tracking.check_tracking("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(InputError, match="does not exist"):
        tracking.check_tracking(f"sqlite:///{tmp_path / 'missing' / 'm.db'}")
    tracking.check_tracking(f"sqlite:///{Path(tmp_path) / 'ok.db'}")


def test_metric_buffer_writes_the_first_pass_at_once_then_in_batches(store):
    uri, exp = store
    ref = tracking.start_run(uri, exp, "trial")
    client = tracking._client(uri)
    buffer = tracking.MetricBuffer(ref, interval_s=3600.0)

    buffer.add({"val_H": 0.1}, step=1)  # the first pass shows at once
    assert [m.step for m in client.get_metric_history(ref.run_id, "val_H")] == [1]
    buffer.add({"val_H": 0.2}, step=2)
    buffer.add({"val_H": 0.3, "loss": float("nan")}, step=3)  # within the interval: held back
    assert [m.step for m in client.get_metric_history(ref.run_id, "val_H")] == [1]

    buffer.flush()
    history = client.get_metric_history(ref.run_id, "val_H")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert client.get_metric_history(ref.run_id, "loss") == []  # non-finite values are dropped, as log_metrics


def test_metric_buffer_splits_what_exceeds_one_mlflow_batch(store):
    uri, exp = store
    ref = tracking.start_run(uri, exp, "trial")
    buffer = tracking.MetricBuffer(ref, interval_s=3600.0)
    buffer.add({"x": 0.0}, step=0)
    for step in range(1, 1300):  # more than one batch's 1000 metrics, with no time-based flush
        buffer.add({"x": float(step)}, step=step)
    buffer.flush()
    steps = [m.step for m in tracking._client(uri).get_metric_history(ref.run_id, "x")]
    assert sorted(steps) == list(range(1300))
