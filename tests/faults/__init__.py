"""Fault injection and bad-input tests (issue 9), and the helpers they share.

The helpers write small files in the real formats the harness reads (xlsa17 `.mat` files, JPEG
images, GloVe text), run the real CLIs in subprocesses, and snapshot folders so a test can say
that a failed command left nothing behind. They live here, not in conftest.py, because
tests/test_bad_inputs.py uses them too.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# ---------------------------------------------------------------- a tiny xlsa17 CUB in the real layout

# Attribute names in CUB's style; every word is in the word-vector file `write_glove` writes.
CUB_ATTRIBUTES = (
    "has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue",
    "has_wing_color::brown", "has_upperparts_color::red", "has_breast_pattern::solid",
    "has_tail_shape::pointed_tail", "has_size::large_(16_-_32_in)",
)
ATTRIBUTE_WORDS = ("bill", "shape", "curved", "up", "or", "down", "dagger", "wing", "color", "blue", "brown",
                   "upper", "parts", "red", "breast", "pattern", "solid", "tail", "pointed", "size", "large")


@dataclass
class TinyCub:
    root: Path  # --data-root
    word_vectors: Path  # GloVe text holding every attribute word
    split_file: Path  # xlsa17/data/CUB/att_splits.mat
    res_file: Path  # xlsa17/data/CUB/res101.mat
    image_paths: list[Path]
    class_names: list[str]
    num_attributes: int

    @property
    def num_images(self) -> int:
        return len(self.image_paths)


def write_jpeg(path: Path, seed: int, size: int = 40) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=85)


def write_glove(path: Path, words, dim: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for word in words:
            fh.write(word + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=dim)) + "\n")
    return path


def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = np.array([s])
    return cell


def split_arrays(labels: np.ndarray, seen: list[int], val: list[int], num_attributes: int,
                 class_names: list[str], seed: int = 0) -> dict:
    """The arrays of an att_splits.mat: the last image of every seen class is test-seen."""
    rng = np.random.default_rng(seed)
    original = rng.uniform(0, 100, size=(num_attributes, len(class_names)))
    att = original / np.linalg.norm(original, axis=0, keepdims=True)
    trainval, test_seen, test_unseen, train, valid = [], [], [], [], []
    for c in range(len(class_names)):
        idx = np.flatnonzero(labels == c)
        if c in seen:
            trainval += idx[:-1].tolist()
            test_seen.append(int(idx[-1]))
            (valid if c in val else train).extend(idx.tolist())
        else:
            test_unseen += idx.tolist()

    def loc(values: list[int]) -> np.ndarray:
        return (np.asarray(sorted(values), dtype=np.uint16) + 1).reshape(-1, 1)  # 1-based, column

    return {"att": att, "original_att": original, "allclasses_names": _cell(class_names),
            "trainval_loc": loc(trainval), "test_seen_loc": loc(test_seen), "test_unseen_loc": loc(test_unseen),
            "train_loc": loc(train), "val_loc": loc(valid)}


def make_tiny_cub(root: Path, classes: int = 8, images_per_class: int = 4, image_size: int = 40) -> TinyCub:
    """CUB as the xlsa17 release lays it out, 8 classes x 4 images: 6 seen (2 of them validation
    classes), 2 unseen; JPEG images, attributes.txt, att_splits.mat, res101.mat and a GloVe file."""
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    class_names = [f"{c + 1:03d}.Bird_{chr(ord('A') + c)}" for c in range(classes)]
    image_dir = root / "CUB_200_2011" / "images"
    paths, files, labels = [], [], []
    for c, name in enumerate(class_names):
        for k in range(images_per_class):
            rel = f"{name}/{name}_{k:04d}.jpg"
            write_jpeg(image_dir / rel, seed=c * 100 + k, size=image_size)
            paths.append(image_dir / rel)
            files.append(f"/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/{rel}")
            labels.append(c)
    labels_np = np.asarray(labels)
    seen, val = list(range(classes - 2)), [classes - 4, classes - 3]
    (root / "attributes.txt").write_text("".join(f"{i + 1} {a}\n" for i, a in enumerate(CUB_ATTRIBUTES)))
    folder = root / "xlsa17" / "data" / "CUB"
    folder.mkdir(parents=True, exist_ok=True)
    split_file, res_file = folder / "att_splits.mat", folder / "res101.mat"
    scipy.io.savemat(split_file, split_arrays(labels_np, seen, val, len(CUB_ATTRIBUTES), class_names))
    rng = np.random.default_rng(1)
    scipy.io.savemat(res_file, {"image_files": _cell(files), "labels": (labels_np + 1).reshape(-1, 1).astype(float),
                                "features": rng.random((2048, len(files)))})
    wv = write_glove(root / "glove.txt", ATTRIBUTE_WORDS)
    return TinyCub(root, wv, split_file, res_file, paths, class_names, len(CUB_ATTRIBUTES))


# ---------------------------------------------------------------- running the CLIs


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"})
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("HARNESS_CACHE", None)
    env.update(extra or {})
    return env


def run_cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
            ) -> CliResult:
    """`python -m <module> args...` in `cwd`; a hang past `timeout` kills its process group."""
    cmd = [PYTHON, "-m", module, *map(str, args)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_pids(sorted(family(proc.pid) | {proc.pid}))  # its session: Ray helpers included
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} hung for {timeout} s; stderr:\n{err[-3000:]}") from None
    return CliResult(cmd, proc.returncode, out, err, time.perf_counter() - started)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by `pid` (a process started with start_new_session=True)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------- what a command left behind


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file and folder under `folder`."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        st = path.lstat()
        out[str(path.relative_to(folder))] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


def changes(before: dict, after: dict) -> list[str]:
    added = [f"+ {p}" for p in after if p not in before]
    removed = [f"- {p}" for p in before if p not in after]
    changed = [f"~ {p}" for p in after if p in before and after[p] != before[p] and after[p][0] != -1]
    return added + removed + changed


def running_runs(tracking_uri: str) -> list[str]:
    """Run ids left RUNNING in a tracking store (every experiment)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not ids:
        return []
    runs = client.search_runs(ids, "attributes.status = 'RUNNING'", run_view_type=ViewType.ALL, max_results=1000)
    return [r.info.run_id for r in runs]


# ---------------------------------------------------------------- processes (Linux /proc, no psutil)


def process_table() -> dict[int, tuple[int, int, str]]:
    """{pid: (ppid, session id, command line)} of every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), int(fields[3]), cmd)
    return table


def descendants(pid: int, table: dict | None = None) -> set[int]:
    table = table or process_table()
    children: dict[int, list[int]] = {}
    for p, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def family(leader: int) -> set[int]:
    """Every live process of `leader`'s session plus its descendants (Ray's helpers included)."""
    table = process_table()
    return {p for p, (_, sid, _) in table.items() if sid == leader} | descendants(leader, table)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


def kill_pids(pids, timeout: float = 15.0) -> None:
    """SIGKILL each pid and wait until it is gone (processes we started only)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


class Spawned:
    """A CLI started in its own session, logging to files; `cleanup()` kills what it left, by PID."""

    def __init__(self, module: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
                 name: str = "proc") -> None:
        self.cmd = [PYTHON, "-m", module, *map(str, args)]
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env or cli_env(), stdout=out, stderr=err,
                                         start_new_session=True)
        self.pid = self.proc.pid
        self.seen: set[int] = set()  # every process of the family seen so far

    def track(self) -> set[int]:
        self.seen |= family(self.pid)
        return self.seen

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cleanup()
            raise AssertionError(f"{' '.join(self.cmd)} did not end in {timeout} s:\n{self.stderr()[-3000:]}") \
                from None

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def cleanup(self) -> None:
        self.track()
        kill_pids(sorted(self.seen | {self.pid}))
        self.proc.poll()


def trial_workers(spawned: Spawned) -> list[int]:
    """PIDs of the Ray actors executing a Tune function trainable, in a search's process family."""
    table = process_table()
    return sorted(p for p in spawned.track() if p in table and table[p][2].startswith("ray::ImplicitFunc"))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2, spawned: Spawned | None = None):
    """Poll `predicate` until it returns a truthy value; fail naming `what` (and the process's stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if spawned is not None:
            spawned.track()
            if spawned.proc.poll() is not None:
                raise AssertionError(f"the process ended (exit {spawned.proc.returncode}) before {what}:\n"
                                     f"{spawned.stderr()[-3000:]}")
        time.sleep(interval)
    tail = f":\n{spawned.stderr()[-3000:]}" if spawned is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{tail}")


# ---------------------------------------------------------------- the three kinds of search records


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str
    kind: str  # search | trial | final (the harness's `kind` tag)
    trial_id: str  # ray_trial_id tag of trial runs
    tags: dict
    metrics: dict
    steps: dict  # metric key -> list of logged steps (duplicates kept, to catch double logging)


def mlflow_records(tracking_uri: str, with_steps: tuple[str, ...] = ("val_H",)) -> list[RunRecord]:
    """Every run of every experiment of a tracking store."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(exps, run_view_type=ViewType.ALL, max_results=5000) if exps else []
    out = []
    for r in runs:
        steps = {k: sorted(m.step for m in client.get_metric_history(r.info.run_id, k)) for k in with_steps
                 if k in r.data.metrics}
        out.append(RunRecord(r.info.run_id, r.info.run_name, r.info.status, r.data.tags.get("kind", ""),
                             r.data.tags.get("ray_trial_id", ""), dict(r.data.tags), dict(r.data.metrics), steps))
    return out


def try_mlflow_records(tracking_uri: str) -> list[RunRecord]:
    """mlflow_records, or [] while the store is being created or locked by the writer."""
    try:
        return mlflow_records(tracking_uri, with_steps=())
    except Exception:  # noqa: BLE001 - a store mid-creation answers with various errors
        return []


@dataclass
class RayTrial:
    trial_id: str
    status: str  # TERMINATED | ERROR | RUNNING | PENDING | PAUSED
    config: dict
    val_H: float | None
    iterations: int  # validation passes run (the trial reports them as `pass`; Tune counts reports only)
    num_failures: int
    diverged: bool
    error: str = ""  # the last line of Ray's error file, for failed trials


def ray_trials(experiment_path: Path) -> dict[str, RayTrial]:
    """Ray Tune's view of an experiment folder (its saved experiment state)."""
    from ray.tune import ExperimentAnalysis

    from harness.search.tune import passes_done

    analysis = ExperimentAnalysis(str(experiment_path))
    out = {}
    for t in analysis.trials:
        last = t.last_result or {}
        error = ""
        path = Path(t.path or "") / "error.txt"
        if path.is_file():
            lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
            error = lines[-1] if lines else ""
        out[t.trial_id] = RayTrial(t.trial_id, t.status, dict(t.config), last.get("val_H"),
                                   passes_done(last), int(t.num_failures),
                                   bool(last.get("diverged")), error)
    return out


@dataclass
class SearcherTrial:
    number: int
    state: str  # COMPLETE | RUNNING | PRUNED | FAIL | WAITING
    params: dict
    value: float | None
    ray_trial_id: str


def searcher_trials(experiment_path: Path) -> list[SearcherTrial]:
    """The Optuna study inside the searcher state Ray saved with the experiment."""
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(experiment_path))
    ray_ids = {ot.number: tid for tid, ot in getattr(searcher, "_ot_trials", {}).items()}
    return [SearcherTrial(t.number, t.state.name, dict(t.params), t.value, ray_ids.get(t.number, ""))
            for t in searcher._ot_study.get_trials(deepcopy=False)]


# ---------------------------------------------------------------- invariants of a finished search


def trial_runs(records):
    return [r for r in records if r.kind == "trial"]


def check_search_records(storage: Path, uri: str, num_samples: int, model: str = "dazle") -> dict:
    """The invariants of a finished search over the three kinds of records; returns the counts."""
    exp = storage / model
    ray = ray_trials(exp)
    opt = searcher_trials(exp)
    runs = mlflow_records(uri)
    trials = trial_runs(runs)

    # Ray: num_samples trials, all ended normally.
    assert len(ray) == num_samples, {t.trial_id: t.status for t in ray.values()}
    assert all(t.status == "TERMINATED" for t in ray.values()), \
        {t.trial_id: (t.status, t.num_failures, t.error) for t in ray.values()}

    # Optuna: one COMPLETE trial per Ray trial, same parameters and value; nothing left RUNNING.
    states = [t.state for t in opt]
    assert "RUNNING" not in states and "WAITING" not in states, states
    by_ray = {}
    for t in opt:
        assert t.ray_trial_id not in by_ray, f"two Optuna trials for Ray trial {t.ray_trial_id}"
        by_ray[t.ray_trial_id] = t
    assert set(by_ray) == set(ray), (sorted(by_ray), sorted(ray))
    for tid, t in by_ray.items():
        assert t.state == "COMPLETE", (tid, t.state)
        assert t.params == {k: ray[tid].config[k] for k in t.params}, (tid, t.params, ray[tid].config)
        assert math.isclose(t.value, ray[tid].val_H, abs_tol=1e-9), (tid, t.value, ray[tid].val_H)

    # MLflow: nothing RUNNING; exactly one FINISHED run per Ray trial; every other trial run was
    # orphaned by the kill and is KILLED with the reason.
    assert not [r.run_id for r in runs if r.status == "RUNNING"], [(r.name, r.status) for r in runs]
    parents = [r for r in runs if r.kind == "search"]
    assert len(parents) == 1 and parents[0].status == "FINISHED", [(r.name, r.status) for r in parents]
    for tid in ray:
        mine = [r for r in trials if r.trial_id == tid]
        assert len(mine) == 1, f"Ray trial {tid} has {len(mine)} MLflow runs"
        assert mine[0].status == "FINISHED", (tid, mine[0].status)
        assert math.isclose(mine[0].metrics["val_H"], ray[tid].val_H, abs_tol=1e-9)
        steps = mine[0].steps["val_H"]
        assert steps == sorted(set(steps)), f"trial {tid} logged a val_H step twice: {steps}"
    orphans = [r for r in trials if r.trial_id not in ray]
    for r in orphans:
        assert r.status == "KILLED" and r.tags.get("ended_by"), (r.name, r.status, r.tags.get("ended_by"))
    return {"ray_trials": len(ray), "optuna_trials": len(opt), "mlflow_trial_runs": len(trials),
            "orphaned_runs_killed": len(orphans)}


def check_every_trial(storage: Path, uri: str, num_samples: int, model: str = "dazle") -> dict:
    """One search among others in a store: every trial accounted for once in Ray, the searcher and
    MLflow (its runs found under the search's parent run), every pass it ran logged once, nothing RUNNING."""
    import json

    ray = ray_trials(storage / model)
    assert len(ray) == num_samples and all(t.status == "TERMINATED" for t in ray.values()), \
        {t: (r.status, r.error) for t, r in ray.items()}
    opt = searcher_trials(storage / model)
    assert len(opt) == num_samples and all(t.state == "COMPLETE" for t in opt), [t.state for t in opt]
    parent = json.loads((storage / "search.json").read_text())["models"][model]["parent_run_id"]
    runs = [r for r in mlflow_records(uri) if r.kind == "trial" and r.tags.get("mlflow.parentRunId") == parent]
    assert not [r for r in mlflow_records(uri) if r.status == "RUNNING"]
    by_trial: dict[str, list] = {}
    for r in runs:
        by_trial.setdefault(r.trial_id, []).append(r)
    assert set(by_trial) == set(ray), (sorted(by_trial), sorted(ray))
    epochs = 0
    for tid, mine in by_trial.items():
        assert len(mine) == 1 and mine[0].status == "FINISHED", (tid, [(r.name, r.status) for r in mine])
        steps = mine[0].steps["val_H"]
        assert steps == list(range(1, ray[tid].iterations + 1)), f"trial {tid}: passes logged {steps}"
        epochs += len(steps)
    return {"ray_trials": len(ray), "optuna_complete": len(opt), "mlflow_trial_runs": len(runs),
            "epochs_logged": epochs, "lost": 0, "duplicated": 0, "left_running": 0}


# ---------------------------------------------------------------- a trial's metrics without the fault


def uninterrupted_history(storage: Path, params: dict, model: str = "dazle") -> list[dict[str, float]]:
    """The per-pass history of the same trial (same settings, parameters, seed, thread count, sealed
    dataset) fitted in this process without interruption: what a killed and resumed trial must match."""
    import json
    from dataclasses import asdict

    from harness.search.settings import SearchSettings
    from harness.search.space import trial_config
    from harness.search.trial import sealed_dataset
    from harness.trainer import fit, resolve_dataset

    settings = SearchSettings(**json.loads((storage / "search.json").read_text())["settings"])
    base = asdict(settings.base_config(model, "search", settings.seed))
    config = trial_config(base, params)
    return fit(config, sealed_dataset(resolve_dataset(config))).history


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))
