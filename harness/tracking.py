"""MLflow layout: one parent run per search or reproduction grid, one child run per trial or
final seed (tagged `mlflow.parentRunId`, so the UI nests them).

Runs are created through `MlflowClient` with explicit run ids rather than the fluent
`mlflow.start_run` stack, because children are logged from Ray workers and from the driver,
possibly at the same time and on other nodes. The default store is SQLite in the working
directory (a non-empty ./mlruns would switch MLflow to the file store, which refuses new runs).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError

DEFAULT_EXPERIMENT = "gzsl-harness"
# MLflow 3.x's UI opens an experiment without this tag in GenAI mode (traces, judges, "evaluation
# runs"); the value is the one the UI itself sets for "Model training".
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description in the UI


def search_experiment(dataset: str) -> str:
    """The default experiment of a search: one per purpose and dataset, so its columns are its own."""
    return f"search/{dataset}"


def reproduce_experiment(target: str) -> str:
    """The default experiment of a reproduction (a table or fig4)."""
    return f"reproduce/{target}"


def format_param(value: object) -> str:
    """A parameter as the runs table shows it: floats to 4 significant digits (1.327e-05), others as is.

    The exact values are in each run's resolved configuration (an artifact or the search folder),
    which is what programs read; params are for people and filters.
    """
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# MLflow's HTTP client retries a refused request 7 times with exponential backoff (minutes); 4
# retries ride out a server restart of about 30 s and let a real outage surface in time.
HTTP_RETRIES = "4"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_tracking(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, with one line, when the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise InputError(f"--tracking-uri {uri}: server answered HTTP {resp.status}, expected 200")
        except (urllib.error.URLError, OSError) as err:
            raise InputError(f"--tracking-uri {uri}: MLflow server unreachable ({err})") from err
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.parent.exists():
            raise InputError(f"--tracking-uri {uri}: folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK):
            raise InputError(f"--tracking-uri {uri}: folder {path.parent} is not writable")


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go next to the database, never to ./mlruns.

    MLflow's default for a SQLite store is <cwd>/mlruns; a non-empty ./mlruns later switches the
    default tracking store to the refusing file store (STACK.md). Servers keep their own default.
    """
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def reachable(uri: str, timeout_s: float = 5.0) -> bool:
    """Whether the tracking store answers now (used to tell an outage from other failures)."""
    try:
        check_tracking(uri, timeout_s)
    except InputError:
        return False
    return True


def experiment_id(uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """Create the experiment once (from the driver) so workers never race on creating it.

    The experiment is tagged as model training (EXPERIMENT_KIND), also when it already existed
    untagged, so MLflow's UI opens it on its runs table rather than in GenAI mode.
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=_artifact_location(uri),
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            return exp_id
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


@dataclass(frozen=True)
class RunRef:
    """Enough to reach a run from any process: where, and which."""

    tracking_uri: str
    experiment_id: str
    run_id: str

    @property
    def client(self):
        return _client(self.tracking_uri)


def start_run(
    uri: str,
    exp_id: str,
    name: str,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
    parent: RunRef | None = None,
    description: str | None = None,
) -> RunRef:
    client = _client(uri)
    all_tags = {"git_commit": git_commit(), "node": socket.gethostname(), **(tags or {})}
    if description:
        all_tags[DESCRIPTION_TAG] = description
    if parent is not None:
        all_tags["mlflow.parentRunId"] = parent.run_id
    run = client.create_run(exp_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
    ref = RunRef(uri, exp_id, run.info.run_id)
    if params:
        log_params(ref, params)
    return ref


def log_params(ref: RunRef, params: Mapping[str, object]) -> None:
    from mlflow.entities import Param

    items = [Param(k, format_param(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        ref.client.log_batch(ref.run_id, params=items[start : start + 100])


def _metric_items(metrics: Mapping[str, float], step: int | None) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(k, float(v), now, int(step or 0))
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    ]


def log_metrics(ref: RunRef, metrics: Mapping[str, float], step: int | None = None) -> None:
    items = _metric_items(metrics, step)
    if items:
        ref.client.log_batch(ref.run_id, metrics=items)


class MetricBuffer:
    """Per-pass metrics of one run, written in one MLflow batch at most every `interval_s` seconds.

    A log_batch costs a short trial's process about 6 ms of CPU (SQLite) per call; once per
    validation pass it was an eighth of a synthetic trial's time. The first add() is written at
    once, so a new run shows its first pass; `flush()` writes the rest and must run before any
    record that claims the metrics are stored (a trial's checkpoint, the run's end).
    """

    MAX_ITEMS = 900  # MLflow takes at most 1000 metrics per batch

    def __init__(self, ref: RunRef, interval_s: float) -> None:
        self.ref, self.interval_s = ref, interval_s
        self._pending: list = []
        self._last_flush: float | None = None

    def add(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._pending.extend(_metric_items(metrics, step))
        due = self._last_flush is None or time.monotonic() - self._last_flush >= self.interval_s
        if due or len(self._pending) >= self.MAX_ITEMS:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            batch = self._pending[: self.MAX_ITEMS]
            self.ref.client.log_batch(self.ref.run_id, metrics=batch)
            del self._pending[: len(batch)]
        self._last_flush = time.monotonic()


def set_description(ref: RunRef, text: str) -> None:
    ref.client.set_tag(ref.run_id, DESCRIPTION_TAG, text)


def set_tags(ref: RunRef, tags: Mapping[str, object]) -> None:
    for k, v in tags.items():
        ref.client.set_tag(ref.run_id, k, str(v))


def log_artifact(ref: RunRef, path: str | Path, artifact_path: str | None = None) -> None:
    ref.client.log_artifact(ref.run_id, str(path), artifact_path)


def log_text(ref: RunRef, text: str, filename: str, artifact_path: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / filename
        target.write_text(text)
        log_artifact(ref, target, artifact_path)


def end_run(ref: RunRef, status: str = "FINISHED") -> None:
    """status: FINISHED, FAILED or KILLED; a run is never left RUNNING on purpose."""
    ref.client.set_terminated(ref.run_id, status=status)


# MLflow 3.17's UI takes its mode from the page (?workflowType=, then the browser's last choice),
# defaulting to GenAI, not from the experiment's kind tag: links we print ask for model training.
UI_MODE = "workflowType=machine_learning"


def ui_url(base: str, experiment_id: str | None = None) -> str:
    """The UI page of an experiment's runs table, in model-training mode."""
    page = f"#/experiments/{experiment_id}" if experiment_id else "#/experiments"
    return f"{base.rstrip('/')}/{page}?{UI_MODE}"


def ui_command(uri: str, experiment_id: str | None = None) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {ui_url(uri, experiment_id)}"
    return f"mlflow ui --backend-store-uri {uri}, then open {ui_url('http://127.0.0.1:5000', experiment_id)}"


# ---------------------------------------------------------------- finding and repairing runs
# A search keys its child runs by tags (Ray trial id, final seed) so that a resumed search or a
# retried trial reopens its run instead of creating a second one.


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def child_runs(
    uri: str, exp_id: str, parent_run_id: str, tags: Mapping[str, object] | None = None,
    status: str | None = None,
) -> list:
    """Runs of `exp_id` whose parent is `parent_run_id` (and whose tags match `tags`)."""
    clauses = [f"tags.`mlflow.parentRunId` = {_quote(parent_run_id)}"]
    clauses += [f"tags.`{k}` = {_quote(v)}" for k, v in (tags or {}).items()]
    if status:
        clauses.append(f"attributes.status = {_quote(status)}")
    client = _client(uri)
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], " and ".join(clauses), max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_status(ref: RunRef) -> str:
    return ref.client.get_run(ref.run_id).info.status


def reopen_run(ref: RunRef) -> None:
    """Mark a run RUNNING again (a retried or resumed trial continues its own run).

    The `ended_by` tag of end_orphans is moved to `previously_ended_by`: it no longer says how
    the run ended, only that it was cut off once.
    """
    client = ref.client
    run = client.get_run(ref.run_id)
    client.update_run(ref.run_id, status="RUNNING")
    if "ended_by" in run.data.tags:
        client.set_tag(ref.run_id, "previously_ended_by", run.data.tags["ended_by"])
        client.delete_tag(ref.run_id, "ended_by")


def max_metric_step(ref: RunRef, key: str) -> int | None:
    """The highest step logged for `key`, so a resumed writer does not log a step twice."""
    history = ref.client.get_metric_history(ref.run_id, key)
    return max((m.step for m in history), default=None)


def end_orphans(uri: str, exp_id: str, parent_run_id: str, reason: str, status: str = "KILLED") -> list[str]:
    """Children of a parent left RUNNING by a dead process: end them as KILLED (or FAILED).

    Returns the run ids it ended. Called by a resumed search before any trial restarts; a trial
    that then resumes reopens its own run.
    """
    ended = []
    for run in child_runs(uri, exp_id, parent_run_id, status="RUNNING"):
        ref = RunRef(uri, exp_id, run.info.run_id)
        set_tags(ref, {"ended_by": reason})
        end_run(ref, status)
        ended.append(run.info.run_id)
    return ended


def log_json(ref: RunRef, obj: object, filename: str, artifact_path: str | None = None) -> None:
    import json

    log_text(ref, json.dumps(obj, indent=2, sort_keys=True, default=str), filename, artifact_path)
