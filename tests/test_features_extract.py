"""ResNet-101 extraction from real JPEG files into the store (weights none: random, deterministic)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lmdb_probe import stored_items

from harness.errors import InputError
from harness.features.__main__ import run as features_cli
from harness.features.extract import (
    IMAGENET_FILE,
    Weights,
    build_backbone,
    preprocessing,
    resolve_weights,
)
from harness.features.info import open_for_info, verify
from harness.features.store import IncompleteCacheError, find_cache, open_store

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(300, 200), (180, 260), (256, 256), (120, 90)]


def write_images(root: Path, count: int, seed: int = 0) -> list[str]:
    """`count` JPEGs of different sizes (one grayscale) in a CUB-like class-folder layout."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        folder = root / f"{i % 2 + 1:03d}.Class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L") if i == 1 else Image.fromarray(pixels)
        image.save(folder / f"img_{i}.jpg", quality=90)
        names.append(f"{folder.name}/img_{i}.jpg")
    return names


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "data"
    names = write_images(root, 4)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(names) + "\n")
    return root, listing, names


def cli(root, listing, cache, *extra) -> list[str]:
    return ["extract", "--dataset", "toy", "--data-root", str(root), "--image-list", str(listing),
            "--weights", "none", "--workers", "0", "--cache-dir", str(cache), *extra]


@functools.cache
def random_backbone() -> torch.nn.Module:
    return build_backbone(Weights("none", None, "test"))


def reference(paths: list[Path], size: int) -> np.ndarray:
    """The same network and preprocessing, applied directly with torchvision."""
    from PIL import Image

    model = random_backbone()
    transform = preprocessing(size)
    with torch.inference_mode():
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        return model(x).numpy()


def test_extract_matches_torchvision_and_resumes(images, tmp_path, capsys):
    root, listing, names = images
    cache = tmp_path / "cache"
    two = tmp_path / "two.txt"
    two.write_text("\n".join(names[:2]))
    assert features_cli(cli(root, two, cache, "--batch-size", "2")) == 0
    reader = find_cache(cache, "toy", {"weights": "none", "count": 2})
    assert (reader.feature_dim, reader.num_regions) == (2048, 49)
    expected = reference([root / n for n in names[:2]], 224).reshape(2, 2048, 49)
    np.testing.assert_allclose(reader.read(np.array([1, 0])), expected[[1, 0]], rtol=2e-3, atol=2e-3)
    meta = reader.metadata
    assert meta["backbone"] == "resnet101" and meta["shape"] == [2048, 7, 7] and meta["dtype"] == "float16"
    assert "centre crop 224x224" in meta["preprocessing"] and meta["complete"]
    assert f"--image-list {two}" in meta["command"]
    reader.close()
    capsys.readouterr()
    assert features_cli(cli(root, two, cache)) == 0  # a re-run has nothing to do
    assert "0 items extracted, 2 already there" in capsys.readouterr().out
    assert features_cli(["info", str(cache), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "2 stored of 2 (complete)" in out and "verify       OK" in out


def test_shards_extract_separately_and_read_as_one(images, tmp_path):
    root, listing, names = images
    cache = tmp_path / "cache"
    assert features_cli(cli(root, listing, cache, "--image-size", "64", "--shard", "1/2")) == 0
    with pytest.raises(IncompleteCacheError, match="--shard 0/2"):
        find_cache(cache, "toy")
    assert features_cli(cli(root, listing, cache, "--image-size", "64", "--shard", "0/2")) == 0
    reader = find_cache(cache, "toy", {"image_size": 64})
    assert [p.name for p in reader.shard_dirs] == ["shard-0-of-2", "shard-1-of-2"]
    expected = reference([root / n for n in names], 64).reshape(4, 2048, 4)
    np.testing.assert_allclose(reader.read(np.arange(4)), expected, rtol=2e-3, atol=2e-3)
    assert verify(reader, progress=False) == []


def test_corrupt_jpeg_is_fatal_and_writes_nothing_then_skip_bad_lists_it(images, tmp_path, capsys):
    root, listing, names = images
    bad = root / names[2]
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated JPEG
    cache = tmp_path / "cache"
    assert features_cli(cli(root, listing, cache, "--image-size", "64", "--batch-size", "4")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"harness.features: error: {bad}: cannot read image") and "--skip-bad" in err
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written

    assert features_cli(cli(root, listing, cache, "--image-size", "64", "--skip-bad")) == 0
    assert f"skipped 2: {bad}" in capsys.readouterr().out
    reader = find_cache(cache, "toy")  # complete: 3 stored + 1 skipped
    assert list(reader.skipped) == [2] and str(bad) in reader.skipped[2]
    with pytest.raises(InputError, match="image 2 was skipped"):
        reader.read(np.array([0, 2]))
    assert reader.read(np.array([3, 0, 1])).shape == (3, 2048, 4)
    reader.close()
    assert features_cli(["info", str(cache)]) == 0
    assert f"skipped      2: {bad}" in capsys.readouterr().out

    write_images(root, 4)  # the file is repaired: a plain re-run fills the gap
    assert features_cli(cli(root, listing, cache, "--image-size", "64")) == 0
    reader = find_cache(cache, "toy")
    assert reader.skipped == {} and reader.stored == 4
    assert verify(reader, progress=False) == []


def test_missing_image_and_data_root_fail_fast(images, tmp_path, capsys):
    root, listing, names = images
    (root / names[3]).unlink()
    assert features_cli(cli(root, listing, tmp_path / "cache")) == 2
    assert f"{root / names[3]}: image file not found" in capsys.readouterr().err
    assert features_cli(cli(tmp_path / "nowhere", listing, tmp_path / "cache")) == 2
    assert "--data-root" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_imagenet_weights_offline_fail_at_once_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # offline even on a machine with a network
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    started = time.perf_counter()
    with pytest.raises(InputError) as err:
        resolve_weights("imagenet")
    assert time.perf_counter() - started < 15
    message = str(err.value)
    assert IMAGENET_FILE in message and "--weights FILE" in message and "\n" not in message


def test_weights_file_is_checked_and_keyed_by_its_hash(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=f"--weights {junk}: not a readable PyTorch state dict"):
        resolve_weights(str(junk))
    small = tmp_path / "small.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, small)
    with pytest.raises(InputError, match="not a torchvision ResNet-101 state dict"):
        build_backbone(resolve_weights(str(small)))
    with pytest.raises(InputError, match="no such file"):
        resolve_weights(str(tmp_path / "absent.pth"))


def test_weights_file_round_trip(tmp_path):
    import torchvision

    torch.manual_seed(1)
    path = tmp_path / "resnet101-mine.pth"
    torch.save(torchvision.models.resnet101(weights=None).state_dict(), path)
    weights = resolve_weights(str(path))
    assert weights.key == f"file:{weights.sha256[:12]}"
    model = build_backbone(weights)
    assert torch.equal(model[0].weight, weights.state_dict["conv1.weight"])


@pytest.mark.slow
def test_sigkill_part_way_then_rerun_gives_every_item_once(tmp_path):
    root = tmp_path / "data"
    names = write_images(root, 10)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(names))
    cache = tmp_path / "cache"
    args = cli(root, listing, cache, "--image-size", "128", "--batch-size", "1")
    folder = cache / "toy__resnet101__none__128__float16"
    proc = subprocess.Popen([sys.executable, "-m", "harness.features", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while stored_items(folder) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "extraction made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = open_for_info(folder)
    assert 3 <= partial.stored < 10, "the kill came too late to test anything"
    assert [p for p in verify(partial, progress=False) if "missing" not in p] == []
    with pytest.raises(IncompleteCacheError, match="finish it .a re-run resumes. with: python -m harness.features"):
        open_store(folder)
    partial.close()

    assert features_cli(args) == 0
    reader = open_store(folder, {"count": 10})
    assert reader.stored == 10 and reader.duplicates == 0 and reader.complete
    assert verify(reader, progress=False) == []
    expected = reference([root / names[i] for i in (0, 9)], 128).reshape(2, 2048, 16)
    np.testing.assert_allclose(reader.read(np.array([0, 9])), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_shards_as_ray_tasks(images, tmp_path, capsys):
    root, listing, names = images
    cache = tmp_path / "cache"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    assert features_cli(cli(root, listing, cache, "--image-size", "64", "--ray-address", "local",
                            "--shards", "2")) == 0
    reader = find_cache(cache, "toy")
    assert [p.name for p in reader.shard_dirs] == ["shard-0-of-2", "shard-1-of-2"]
    assert reader.stored == 4 and verify(reader, progress=False) == []
