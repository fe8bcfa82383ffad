"""A catalogue of bad inputs across the CLIs (issue 9, part 3).

Every case runs the real CLI in a subprocess, in a fresh working folder holding small files of
the real formats (an xlsa17 CUB with JPEG images, a GloVe file, LMDB caches), and checks
- exit code 2;
- exactly one line on stderr, `<prog>: error: ...`, naming the input and saying what was expected;
- nothing half-written: the whole folder (data, caches, tracking store, outputs) is unchanged, or,
  where a store existed before, no run was left RUNNING.
docs/bad-inputs.md is the table of these cases; `HARNESS_BAD_INPUTS_TABLE=FILE pytest
tests/test_bad_inputs.py` writes the observed rows (input, command, error line, exit code) to FILE.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from faults import (
    CliResult,
    TinyCub,
    changes,
    make_tiny_cub,
    run_cli,
    running_runs,
    snapshot,
    write_glove,
)

TRAIN, FEATURES, SEARCH, REPRODUCE = "harness.train", "harness.features", "harness.search", "harness.reproduce"
# tqdm fragments (a bar redrawn with \r) are progress, not error lines.
_PROGRESS = re.compile(r"\d+%\||\d+/\d+ \[|it/s|img/s|step/s")
_ROWS: list[tuple[str, str, str, int]] = []


# ---------------------------------------------------------------- helpers


def error_line(result: CliResult, prog: str) -> str:
    """The one error line of a failed command, after the checks every bad input must pass."""
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines()
             if line.strip() and not _PROGRESS.search(line)]
    assert result.returncode == 2, (
        f"exit code {result.returncode}, expected 2 (bad input)\nstderr:\n{result.stderr[-3000:]}")
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n" + "\n".join(lines[-30:])
    line = lines[0]
    assert re.match(rf"(python -m )?{re.escape(prog)}: error: ", line), line
    assert "Traceback" not in result.stderr
    return line


def check_bad_input(result: CliResult, prog: str, *names: str, expected: str = "expected",
                    folder: Path | None = None, before: dict | None = None, label: str = "") -> str:
    """Exit 2, one line naming each of `names` and saying what was `expected`, `folder` untouched."""
    line = error_line(result, prog)
    for name in names:
        assert name in line, f"the error does not name {name!r}: {line}"
    assert re.search(expected, line, re.I), f"the error does not say what was expected ({expected!r}): {line}"
    if folder is not None and before is not None:
        left = changes(before, snapshot(folder))
        assert not left, f"the failed command changed {folder}:\n" + "\n".join(left[:20])
    shown = " ".join(_short(a) for a in result.args[2:])
    _ROWS.append((label or names[0], f"python -m {shown}", _short(line), result.returncode))
    return line


_TMP = re.compile(r"/[^\s'\"(]*?/test_\w+?\d+(?:/work)?(?=/)")


def _short(text: str) -> str:
    """Temporary folders shown as '…' (the table in docs/bad-inputs.md)."""
    return _TMP.sub("…", text).replace("sqlite:…", "sqlite:///…")


@pytest.fixture(scope="session", autouse=True)
def _write_table():
    yield
    out = os.environ.get("HARNESS_BAD_INPUTS_TABLE")
    if out and _ROWS:
        with open(out, "w") as fh:
            fh.write("| input | command | error line | exit |\n|---|---|---|---|\n")
            for label, cmd, line, code in _ROWS:
                esc = [s.replace("|", "\\|") for s in (label, cmd, line)]
                fh.write(f"| {esc[0]} | `{esc[1]}` | {esc[2]} | {code} |\n")


@pytest.fixture(scope="module")
def tiny_cub_base(tmp_path_factory) -> TinyCub:
    return make_tiny_cub(tmp_path_factory.mktemp("cub-base") / "cub")


@pytest.fixture
def work(tmp_path) -> Path:
    """The command's working folder: defaults such as ./cache and ./mlflow.db land here."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture
def cub(tiny_cub_base, tmp_path) -> TinyCub:
    """A private copy of the tiny CUB that a case may damage."""
    root = tmp_path / "cub"
    shutil.copytree(tiny_cub_base.root, root)
    base = tiny_cub_base
    move = lambda p: root / p.relative_to(base.root)  # noqa: E731
    return TinyCub(root, move(base.word_vectors), move(base.split_file), move(base.res_file),
                   [move(p) for p in base.image_paths], base.class_names, base.num_attributes)


def cub_args(cub: TinyCub, *extra: str) -> list[str]:
    return ["--dataset", "cub", "--data-root", str(cub.root), "--word-vectors", str(cub.word_vectors), *extra]


def rewrite_mat(path: Path, drop: tuple[str, ...] = (), **replace) -> None:
    content = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__") and k not in drop}
    content.update(replace)
    scipy.io.savemat(path, content)


def write_cache(cache_dir: Path, dataset: str, count: int, folder_name: str | None = None,
                identity: dict | None = None) -> Path:
    """A complete LMDB cache of `count` random [2048, 1] items, written with the harness's own store."""
    from harness.features.store import CacheKey, FeatureStoreWriter

    key = CacheKey(dataset, "resnet101", "none", 32, "float16")
    folder = cache_dir / (folder_name or key.folder_name())
    ident = {**key.as_dict(), "weights_sha256": None, "preprocessing": "test fixture", "shape": [2048, 1, 1],
             "count": count, "images_sha256": "0" * 64, **(identity or {})}
    writer = FeatureStoreWriter(folder, ident)
    rng = np.random.default_rng(0)
    writer.write_batch(np.arange(count), rng.random((count, 2048, 1, 1), dtype=np.float32))
    writer.finish()
    writer.close()
    return folder


# ================================================================ harness.train


def test_train_unknown_dataset(work):
    before = snapshot(work)
    r = run_cli(TRAIN, "--dataset", "imagenet-zsl", cwd=work)
    check_bad_input(r, TRAIN, "--dataset", "imagenet-zsl", folder=work, before=before, label="unknown dataset")


def test_train_unknown_model(work):
    before = snapshot(work)
    r = run_cli(TRAIN, "--model", "clip", cwd=work)
    check_bad_input(r, TRAIN, "--model", "clip", folder=work, before=before, label="unknown model")


def test_train_negative_learning_rate(work):
    before = snapshot(work)
    r = run_cli(TRAIN, "--lr", "-0.001", cwd=work)
    check_bad_input(r, TRAIN, "--lr", "-0.001", folder=work, before=before, label="negative learning rate")


def test_train_k_larger_than_attribute_count(work):
    before = snapshot(work)
    r = run_cli(TRAIN, "--num-attributes", "5000", "--epochs", "1", cwd=work)
    check_bad_input(r, TRAIN, "--num-attributes", "5000", expected=r"has \d+ attributes", folder=work,
                    before=before, label="k larger than the attribute count")


def test_train_cuda_device_on_a_node_without_gpu(work):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this node has a GPU")
    before = snapshot(work)
    r = run_cli(TRAIN, "--device", "cuda:3", "--epochs", "1", cwd=work)
    check_bad_input(r, TRAIN, "--device", expected="no CUDA device", folder=work, before=before,
                    label="GPU asked for on a node without one")


def test_train_data_root_missing(work, tmp_path):
    before = snapshot(tmp_path)
    missing = tmp_path / "no-such-folder"
    r = run_cli(TRAIN, "--dataset", "cub", "--data-root", missing, "--word-vectors", missing / "w.txt", cwd=work)
    check_bad_input(r, TRAIN, "--data-root", str(missing), folder=tmp_path, before=before,
                    label="data root missing")


def test_train_data_root_empty(work, tmp_path, tiny_cub_base):
    empty = tmp_path / "empty"
    empty.mkdir()
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, "--dataset", "cub", "--data-root", empty, "--word-vectors", tiny_cub_base.word_vectors,
                cwd=work)
    check_bad_input(r, TRAIN, "att_splits.mat", folder=tmp_path, before=before, label="data root empty")


def test_train_image_list_missing(cub, work, tmp_path):
    cub.res_file.unlink()
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub), cwd=work)
    check_bad_input(r, TRAIN, "res101.mat", "missing", folder=tmp_path, before=before,
                    label="annotation file missing (res101.mat)")


def test_train_truncated_split_file(cub, work, tmp_path):
    data = cub.split_file.read_bytes()
    cub.split_file.write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub), cwd=work)
    check_bad_input(r, TRAIN, "att_splits.mat", folder=tmp_path, before=before,
                    label="truncated att_splits.mat")


def test_train_split_file_missing_key(cub, work, tmp_path):
    rewrite_mat(cub.split_file, drop=("test_unseen_loc",))
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub), cwd=work)
    check_bad_input(r, TRAIN, "att_splits.mat", "test_unseen_loc", folder=tmp_path, before=before,
                    label="att_splits.mat without test_unseen_loc")


def test_train_split_file_mismatched_shapes(cub, work, tmp_path):
    att = scipy.io.loadmat(cub.split_file)["att"]
    rewrite_mat(cub.split_file, att=att[:, :-1])  # one class column short
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub), cwd=work)
    check_bad_input(r, TRAIN, "att_splits.mat", "att", folder=tmp_path, before=before,
                    label="att_splits.mat: att has fewer columns than allclasses_names")


def test_train_truncated_attribute_names(cub, work, tmp_path):
    names = cub.root / "attributes.txt"
    names.write_text("".join(names.read_text().splitlines(keepends=True)[:-3]))
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub), cwd=work)
    check_bad_input(r, TRAIN, "attributes.txt", folder=tmp_path, before=before,
                    label="truncated attributes.txt")


def test_train_split_locs_out_of_range(cub, work, tmp_path):
    loc = scipy.io.loadmat(cub.split_file)["test_seen_loc"].copy()
    loc[0, 0] = 60000
    rewrite_mat(cub.split_file, test_seen_loc=loc)
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub), cwd=work)
    check_bad_input(r, TRAIN, "att_splits.mat", "test_seen_loc", folder=tmp_path, before=before,
                    label="att_splits.mat: an image number past the image list")


def test_train_word_vectors_wrong_dimension(cub, work, tmp_path):
    lines = cub.word_vectors.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-2])  # one row two values short
    cub.word_vectors.write_text("\n".join(lines) + "\n")
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub), cwd=work)
    check_bad_input(r, TRAIN, "--word-vectors", "glove.txt", folder=tmp_path, before=before,
                    label="word-vector file with a row of the wrong dimension")


def test_train_word_vectors_without_known_words(cub, work, tmp_path):
    write_glove(cub.word_vectors, ["zyx", "qwv", "kkj"])
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub), cwd=work)
    check_bad_input(r, TRAIN, "--word-vectors", "glove.txt", folder=tmp_path, before=before,
                    label="word-vector file with none of the attribute words")


def test_train_no_feature_cache(cub, work, tmp_path):
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub, "--cache-dir", str(tmp_path / "caches")), cwd=work)
    check_bad_input(r, TRAIN, "cub", "caches", expected="harness.features extract", folder=tmp_path,
                    before=before, label="no feature cache")


def test_train_cache_of_other_images(cub, work, tmp_path):
    """A cache with 10 items for a dataset whose files list 32 images: built from other files."""
    write_cache(tmp_path / "caches", "cub", 10)
    before = snapshot(tmp_path)
    r = run_cli(TRAIN, *cub_args(cub, "--cache-dir", str(tmp_path / "caches")), cwd=work)
    check_bad_input(r, TRAIN, "cub__resnet101", "10", "32", expected="other settings|expected", folder=tmp_path,
                    before=before, label="cache built from other files (10 items for 32 images)")


# ================================================================ harness.features


def _image_list(tmp_path: Path, cub: TinyCub, count: int) -> Path:
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p.relative_to(cub.root)}\n" for p in cub.image_paths[:count]))
    return listing


def extract_args(cub: TinyCub, cache: Path, *extra: str) -> list[str]:
    return ["extract", "--dataset", "cub", "--data-root", str(cub.root), "--weights", "none", "--image-size", "32",
            "--workers", "0", "--batch-size", "4", "--device", "cpu", "--cache-dir", str(cache), *extra]


def test_features_corrupt_jpeg(cub, work, tmp_path):
    bad = cub.image_paths[1]
    bad.write_bytes(bad.read_bytes()[:300])  # a JPEG cut short
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, *extract_args(cub, tmp_path / "caches"), cwd=work)
    check_bad_input(r, FEATURES, bad.name, expected="--skip-bad", folder=tmp_path, before=before,
                    label="corrupt (truncated) JPEG")
    assert not (tmp_path / "caches").exists(), "a cache folder was created for a failed extraction"


def test_features_image_not_a_jpeg(cub, work, tmp_path):
    bad = cub.image_paths[0]
    bad.write_text("<html>404 Not Found</html>")  # what a failed download leaves
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, *extract_args(cub, tmp_path / "caches"), cwd=work)
    check_bad_input(r, FEATURES, bad.name, expected="--skip-bad", folder=tmp_path, before=before,
                    label="an image file that is not an image")


def test_features_cache_built_with_other_settings(cub, work, tmp_path):
    """Extract into a cache folder that holds features of another image list: refused, cache untouched."""
    from harness.features.extract import describe_preprocessing

    write_cache(tmp_path / "caches", "cub", 5, identity={"preprocessing": describe_preprocessing(32)})
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, *extract_args(cub, tmp_path / "caches"), cwd=work)
    check_bad_input(r, FEATURES, "other settings", "count", expected="remove|choose another --cache-dir",
                    folder=tmp_path, before=before, label="extract into a cache built with other settings")


def test_features_weights_file_is_a_pickle(cub, work, tmp_path):
    """A --weights file that is a pickle carrying code: refused, and the code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    weights = tmp_path / "resnet101.pth"
    weights.write_bytes(pickle.dumps(Payload()))
    before = snapshot(tmp_path)
    args = extract_args(cub, tmp_path / "caches")
    args[args.index("--weights") + 1] = str(weights)
    r = run_cli(FEATURES, *args, cwd=work)
    check_bad_input(r, FEATURES, "--weights", "resnet101.pth", folder=tmp_path, before=before,
                    label="--weights file that is a pickle with code in it")
    assert not marker.exists(), "the pickle's payload ran: --weights is unpickled unsafely"


def test_features_bad_shard(cub, work, tmp_path):
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, *extract_args(cub, tmp_path / "caches", "--shard", "3/2"), cwd=work)
    check_bad_input(r, FEATURES, "--shard", "3/2", folder=tmp_path, before=before, label="--shard 3/2")


def test_features_import_hdf5_not_hdf5(cub, work, tmp_path):
    fake = tmp_path / "feature_map_ResNet_101_CUB.hdf5"
    fake.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)  # a header and nothing else: a broken download
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, "import-hdf5", "--dataset", "cub", "--file", fake, "--cache-dir", tmp_path / "caches",
                cwd=work)
    check_bad_input(r, FEATURES, "--file", fake.name, expected="HDF5", folder=tmp_path, before=before,
                    label="import-hdf5 of a file that is not HDF5")


def test_features_import_res101_without_features(cub, work, tmp_path):
    rewrite_mat(cub.res_file, drop=("features",))
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, "import-res101", "--dataset", "cub", "--file", cub.res_file,
                "--cache-dir", tmp_path / "caches", cwd=work)
    check_bad_input(r, FEATURES, "--file", "res101.mat", "features", folder=tmp_path, before=before,
                    label="import-res101 of a res101.mat without 'features'")


def test_features_info_of_a_folder_without_cache(work, tmp_path):
    (tmp_path / "stuff").mkdir()
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, "info", tmp_path / "stuff", "--verify", cwd=work)
    check_bad_input(r, FEATURES, "stuff", folder=tmp_path, before=before, label="info of a folder without cache")


# ---------------------------------------------------------------- unwritable and full output folders


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.decode().strip()})")


def _umount(folder: Path) -> None:
    for _ in range(20):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write, root included: a read-only tmpfs as root, mode 0555 otherwise."""
    folder = tmp_path / "read-only"
    if os.geteuid() == 0:
        _mount_tmpfs(folder, "size=1m,ro")
        try:
            yield folder
        finally:
            _umount(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture
def full_folder(tmp_path):
    """A folder on a 256 KiB filesystem that is already full (needs root to mount a tmpfs)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "full"
    _mount_tmpfs(folder, "size=256k")
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: the folder is full
            pass
        finally:
            os.close(fd)
        yield folder
    finally:
        _umount(folder)


def test_features_read_only_cache_dir(cub, work, tmp_path, read_only_folder):
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, *extract_args(cub, read_only_folder / "caches"), cwd=work)
    check_bad_input(r, FEATURES, str(read_only_folder), expected="writ", folder=tmp_path, before=before,
                    label="read-only cache folder")


def test_features_full_cache_dir(cub, work, tmp_path, full_folder):
    before = snapshot(tmp_path)
    r = run_cli(FEATURES, *extract_args(cub, full_folder / "caches"), cwd=work)
    check_bad_input(r, FEATURES, str(full_folder), expected="space|full", label="full cache folder (no space left)")
    left = changes(before, snapshot(tmp_path))
    assert not left, "a failed extraction into a full folder left files behind:\n" + "\n".join(left)


# ================================================================ harness.search


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SMALL_SEARCH = ["--num-samples", "2", "--epochs", "1", "--final-seeds", "0", "--cpus-per-trial", "1"]


def test_search_unreachable_tracking_uri(work, tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    before = snapshot(tmp_path)
    r = run_cli(SEARCH, *SMALL_SEARCH, "--tracking-uri", uri, "--storage", work / "search", cwd=work)
    check_bad_input(r, SEARCH, "--tracking-uri", uri, expected="unreachable", folder=tmp_path, before=before,
                    label="unreachable MLflow --tracking-uri")


def test_search_unreachable_ray_address(work, tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    before = snapshot(tmp_path)
    r = run_cli(SEARCH, *SMALL_SEARCH, "--address", address, "--tracking-uri", f"sqlite:///{work / 'm.db'}",
                "--storage", work / "search", cwd=work)
    check_bad_input(r, SEARCH, "--address", address, expected="unreachable", folder=tmp_path, before=before,
                    label="unreachable Ray --address")


def test_search_read_only_storage(work, tmp_path, read_only_folder):
    before = snapshot(tmp_path)
    r = run_cli(SEARCH, *SMALL_SEARCH, "--storage", read_only_folder / "search",
                "--tracking-uri", f"sqlite:///{work / 'm.db'}", cwd=work)
    check_bad_input(r, SEARCH, "--storage", str(read_only_folder), expected="writable", folder=tmp_path,
                    before=before, label="read-only search folder (--storage)")


def test_search_read_only_tracking_store(work, tmp_path, read_only_folder):
    before = snapshot(tmp_path)
    uri = f"sqlite:///{read_only_folder / 'mlflow.db'}"
    r = run_cli(SEARCH, *SMALL_SEARCH, "--storage", work / "search", "--tracking-uri", uri, cwd=work)
    check_bad_input(r, SEARCH, "--tracking-uri", str(read_only_folder), expected="writable", folder=tmp_path,
                    before=before, label="SQLite tracking store in a read-only folder")


def test_search_resume_without_a_search(work, tmp_path):
    before = snapshot(tmp_path)
    r = run_cli(SEARCH, "--resume", "--storage", work / "nothing-here", cwd=work)
    check_bad_input(r, SEARCH, "--storage", "nothing-here", expected="no search.json", folder=tmp_path,
                    before=before, label="--resume of a folder without a search")


def test_search_zero_samples(work, tmp_path):
    before = snapshot(tmp_path)
    r = run_cli(SEARCH, "--num-samples", "0", cwd=work)
    check_bad_input(r, SEARCH, "--num-samples", folder=tmp_path, before=before, label="--num-samples 0")


def _shadow_space(tmp_path: Path, space: str) -> dict[str, str]:
    """A user-edited search_spaces/dazle.py, placed first on PYTHONPATH (the repository is untouched)."""
    from faults import REPO, cli_env

    pkg = tmp_path / "edited" / "search_spaces"
    pkg.mkdir(parents=True)
    shutil.copy(REPO / "search_spaces" / "__init__.py", pkg / "__init__.py")
    (pkg / "dazle.py").write_text(space)
    return cli_env({"PYTHONPATH": f"{pkg.parent}{os.pathsep}{REPO}"})


def _no_ray_left(work: Path, result: CliResult | None) -> None:
    """Processes a command started in `work` are gone once it has exited by itself (else killed by PID)."""
    from faults import kill_pids, process_table

    time.sleep(1.0)  # Ray's agents notice the raylet's end within a second
    left = [p for p in process_table() if _cwd(p) == work]
    kill_pids(left)
    if result is not None:
        assert not left, f"the command exited but left {len(left)} processes running: {left}"


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


@pytest.mark.slow
def test_search_space_with_unknown_key(work, tmp_path):
    env = _shadow_space(tmp_path, 'SPACE = {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}\n'
                                  "DEFAULTS = {}\n")
    before = snapshot(tmp_path)
    r = run_cli(SEARCH, *SMALL_SEARCH, "--storage", work / "search", "--tracking-uri", f"sqlite:///{work / 'm.db'}",
                cwd=work, env=env, timeout=180)
    _no_ray_left(work, r)
    check_bad_input(r, SEARCH, "search_spaces/dazle.py", "learning_rate", folder=tmp_path, before=before,
                    label="search space with an unknown key")


@pytest.mark.slow
def test_search_space_with_negative_learning_rate(work, tmp_path):
    env = _shadow_space(tmp_path, 'SPACE = {"lr": {"type": "uniform", "low": -0.01, "high": -0.001}}\n'
                                  'DEFAULTS = {"lr": -0.005}\n')
    before = snapshot(tmp_path)
    r = run_cli(SEARCH, *SMALL_SEARCH, "--storage", work / "search", "--tracking-uri", f"sqlite:///{work / 'm.db'}",
                cwd=work, env=env, timeout=180)
    _no_ray_left(work, r)
    check_bad_input(r, SEARCH, "search_spaces/dazle.py", "lr", expected="positive", folder=tmp_path,
                    before=before, label="search space allowing a negative learning rate")


@pytest.mark.slow
def test_search_more_gpus_per_trial_than_any_node(work, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this node has GPUs")
    before = snapshot(tmp_path)
    r = None
    try:
        r = run_cli(SEARCH, *SMALL_SEARCH, "--gpus-per-trial", "4", "--storage", work / "search",
                    "--tracking-uri", f"sqlite:///{work / 'm.db'}", cwd=work, timeout=90)
    finally:
        _no_ray_left(work, r)
    check_bad_input(r, SEARCH, "--gpus-per-trial", folder=tmp_path, before=before,
                    label="--gpus-per-trial larger than any node")


# ================================================================ harness.reproduce


def test_reproduce_unknown_table(work, tmp_path):
    before = snapshot(tmp_path)
    r = run_cli(REPRODUCE, "table9", cwd=work)
    check_bad_input(r, REPRODUCE, "table9", expected="choose from", folder=tmp_path, before=before,
                    label="unknown table")


def test_reproduce_unknown_dataset(work, tmp_path):
    before = snapshot(tmp_path)
    r = run_cli(REPRODUCE, "table2", "--dataset", "imagenet", "--tracking-uri", f"sqlite:///{work / 'm.db'}", cwd=work)
    check_bad_input(r, REPRODUCE, "--dataset", "imagenet", folder=tmp_path, before=before,
                    label="unknown dataset (reproduce)")


def test_reproduce_real_dataset_without_cache(work, tmp_path, tiny_cub_base):
    before = snapshot(tmp_path)
    r = run_cli(REPRODUCE, "fig4", "--dataset", "cub", "--data-root", tiny_cub_base.root, "--word-vectors",
                tiny_cub_base.word_vectors, "--cache-dir", tmp_path / "caches",
                "--tracking-uri", f"sqlite:///{work / 'm.db'}", cwd=work)
    check_bad_input(r, REPRODUCE, "--dataset cub", expected="harness.features extract", folder=tmp_path,
                    before=before, label="reproduce a real dataset without its feature cache")


def test_reproduce_k_larger_than_attribute_count(work, tmp_path):
    before = snapshot(tmp_path)
    r = run_cli(REPRODUCE, "fig4", "--dataset", "synthetic", "--k-grid", "4,5000",
                "--tracking-uri", f"sqlite:///{work / 'm.db'}", cwd=work)
    check_bad_input(r, REPRODUCE, "--k-grid", "5000", expected=r"outside 1\.\.\d+", folder=tmp_path,
                    before=before, label="fig4 --k-grid with k larger than the attribute count")


def test_reproduce_tuned_source_missing(work, tmp_path):
    before = snapshot(tmp_path)
    r = run_cli(REPRODUCE, "table4", "--dataset", "synthetic-deepfashion", "--tuned", tmp_path / "no-search",
                "--tracking-uri", f"sqlite:///{work / 'm.db'}", cwd=work)
    check_bad_input(r, REPRODUCE, "--tuned", "no-search", expected="not a file, a folder or an MLflow run id",
                    folder=tmp_path, before=before, label="--tuned source that does not exist")


@pytest.mark.slow
def test_reproduce_read_only_out_folder(work, tmp_path, read_only_folder):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    before = snapshot(tmp_path)
    r = None
    try:
        r = run_cli(REPRODUCE, "fig4", "--dataset", "synthetic", "--k-grid", "4", "--lambda-grid", "0.1",
                    "--seeds", "1", "--epochs", "1", "--no-progress", "--out", read_only_folder / "out",
                    "--tracking-uri", uri, cwd=work, timeout=240)
    finally:
        _no_ray_left(work, r)
    if (tmp_path / "store" / "mlflow.db").exists():
        assert not running_runs(uri), "a run was left RUNNING"
    check_bad_input(r, REPRODUCE, "--out", str(read_only_folder), expected="writ", folder=tmp_path, before=before,
                    label="read-only --out folder")


@pytest.mark.slow
def test_reproduce_more_gpus_per_trial_than_any_node(work, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this node has GPUs")
    before = snapshot(tmp_path)
    r = None
    try:
        r = run_cli(REPRODUCE, "fig4", "--dataset", "synthetic", "--k-grid", "4", "--lambda-grid", "0.1",
                    "--seeds", "1", "--epochs", "1", "--no-progress", "--gpus-per-trial", "4",
                    "--tracking-uri", f"sqlite:///{work / 'm.db'}", cwd=work, timeout=90)
    finally:
        _no_ray_left(work, r)
    check_bad_input(r, REPRODUCE, "--gpus-per-trial", folder=tmp_path, before=before,
                    label="--gpus-per-trial larger than any node (reproduce)")
