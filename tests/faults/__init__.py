"""Fault injection and bad-input tests (issue 9), and the helpers they share.

The helpers write small files in the real formats the harness reads (xlsa17 `.mat` files, JPEG
images, GloVe text), run the real CLIs in subprocesses, and snapshot folders so a test can say
that a failed command left nothing behind. They live here, not in conftest.py, because
tests/test_bad_inputs.py uses them too.
"""

from __future__ import annotations

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
        kill_group(proc.pid)
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
