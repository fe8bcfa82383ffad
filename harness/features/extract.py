"""ResNet-101 region features of a dataset's images into the LMDB store, as the authors extract them.

torchvision ResNet-101 without its average pool and fc layer (children()[:-2]); images resized so
the short side is `image_size` (224), centre-cropped to image_size x image_size, ImageNet mean/std;
one [2048, 7, 7] map per image. Batches are committed one transaction each, so a re-run skips
finished items and a kill never leaves half an item.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.errors import InputError
from harness.features.store import (
    DTYPES,
    CacheKey,
    FeatureStoreWriter,
    default_cache_dir,
    shard_indices,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The authors' weights (torchvision `pretrained=True`); the file name carries its sha256 prefix.
IMAGENET_FILE = "resnet101-63fe2227.pth"
IMAGENET_URL = "https://download.pytorch.org/models/" + IMAGENET_FILE
IMAGENET_V2_FILE = "resnet101-cd907fc2.pth"  # torchvision's newer recipe: a different cache key
NETWORK_PROBE_S = 8.0


@dataclass
class Weights:
    key: str  # CacheKey.weights: "imagenet", "none" or "file:<sha256[:12]>"
    sha256: str | None
    source: str
    state_dict: dict | None = field(default=None, repr=False)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _load_state_dict(path: Path, option: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise InputError(f"{option} {path}: not a readable PyTorch state dict; expected torchvision ResNet-101 "
                         f"weights that torch.load(weights_only=True) accepts ({type(err).__name__}: {reason})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{option} {path}: expected a state dict of tensors (torchvision ResNet-101 weights)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _reachable(url: str, timeout: float = NETWORK_PROBE_S) -> bool:
    """Whether `url` answers within `timeout` s; in a thread so that a hanging DNS lookup cannot block."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                result.append(True)
        except Exception:  # noqa: BLE001 - any failure means offline for our purpose
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def resolve_weights(spec: str) -> Weights:
    """--weights imagenet | none | FILE -> the state dict and the cache key it gives."""
    if spec == "none":
        return Weights("none", None, "random initialisation (seed 0, zero-initialised residual branches)")
    if spec == "imagenet":
        cached = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE
        if not cached.is_file():
            if not _reachable(IMAGENET_URL):
                raise InputError(
                    f"--weights imagenet: torchvision's ResNet-101 weights are not in {cached.parent} and "
                    f"{IMAGENET_URL} cannot be reached (offline?); copy {IMAGENET_FILE} (the authors' weights; "
                    f"{IMAGENET_V2_FILE} is torchvision's newer ones) to this machine and pass --weights FILE"
                )
            import socket

            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(60)  # a stalled download fails instead of hanging
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(IMAGENET_URL, str(cached), hash_prefix="63fe2227", progress=True)
            except Exception as err:  # noqa: BLE001
                raise InputError(f"--weights imagenet: download of {IMAGENET_URL} failed ({err}); "
                                 f"pass --weights FILE with {IMAGENET_FILE}") from None
            finally:
                socket.setdefaulttimeout(old)
        return Weights("imagenet", sha256_file(cached), str(cached), _load_state_dict(cached, "--weights"))
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--weights {spec}: no such file; expected imagenet, none or a ResNet-101 state dict "
                         f"file such as {IMAGENET_FILE}")
    digest = sha256_file(path)
    key = "imagenet" if digest.startswith(IMAGENET_FILE.split("-")[1][:8]) else f"file:{digest[:12]}"
    return Weights(key, digest, str(path.resolve()), _load_state_dict(path, "--weights"))


def build_backbone(weights: Weights) -> nn.Module:
    """ResNet-101 up to its last conv block: [B, 3, S, S] -> [B, 2048, S/32, S/32]."""
    import torchvision

    torch.manual_seed(0)  # `none` gives the same random network in every shard and every run
    # Zero-initialised residual branches keep random activations in float16's range (a plain random
    # ResNet-101 in eval mode reaches ~1e5); loaded weights overwrite them.
    model = torchvision.models.resnet101(weights=None, zero_init_residual=weights.state_dict is None)
    if weights.state_dict is not None:
        try:
            missing, unexpected = model.load_state_dict(weights.state_dict, strict=False)
        except RuntimeError as err:  # shapes that do not fit
            first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
            raise InputError(f"--weights {weights.source}: not a torchvision ResNet-101 state dict ({first})") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        unexpected = [k for k in unexpected if not k.startswith("fc.")]
        if missing or unexpected:
            raise InputError(
                f"--weights {weights.source}: not a torchvision ResNet-101 state dict "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    return nn.Sequential(*list(model.children())[:-2]).eval()


def preprocessing(image_size: int):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(image_size),  # short side -> image_size, aspect kept
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def describe_preprocessing(image_size: int) -> str:
    return (f"RGB; resize short side to {image_size} (bilinear, antialias); centre crop {image_size}x{image_size}; "
            f"ImageNet mean {IMAGENET_MEAN} std {IMAGENET_STD}")


class ImageFiles(torch.utils.data.Dataset):
    """The images to extract; an unreadable one yields its error instead of raising in a worker."""

    def __init__(self, paths: Sequence[Path], indices: np.ndarray, image_size: int) -> None:
        self.paths = paths
        self.indices = indices
        self.image_size = image_size
        self.transform = preprocessing(image_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        from PIL import Image

        index = int(self.indices[k])
        try:
            with Image.open(self.paths[index]) as img:
                tensor = self.transform(img.convert("RGB"))
            return index, tensor, None
        except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad file
            blank = torch.zeros(3, self.image_size, self.image_size)
            return index, blank, f"{type(err).__name__}: {err}"


def _collate(items):
    indices = np.array([i for i, _, _ in items], dtype=np.int64)
    images = torch.stack([t for _, t, _ in items])
    errors = [e for _, _, e in items]
    return indices, images, errors


@dataclass
class ExtractOptions:
    dataset: str
    weights: str = "imagenet"
    batch_size: int = 32
    device: str | None = None  # None: cuda when visible, else cpu
    workers: int = 4
    cache_dir: str | None = None
    skip_bad: bool = False
    shard: tuple[int, int] = (0, 1)
    image_size: int = 224
    dtype: str = "float16"
    progress: bool = True
    command: str | None = None  # the CLI command that (re)builds this cache, stored in metadata


@dataclass
class ExtractResult:
    folder: Path
    written: int
    already: int
    skipped: dict[int, str]
    complete: bool
    seconds: float


def images_digest(paths: Sequence[Path], data_root: Path | None) -> str:
    """sha256 of the image list (relative to the data root): a changed list or order is refused."""
    names = [os.path.relpath(p, data_root) if data_root else str(p) for p in paths]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _device(requested: str | None) -> torch.device:
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: no CUDA device is visible on this node")
    if not (requested == "cpu" or requested.startswith("cuda")):
        raise InputError(f"--device: expected cpu or cuda, got {requested!r}")
    return torch.device(requested)


def extract(image_paths: Sequence[Path], options: ExtractOptions, data_root: Path | None = None) -> ExtractResult:
    """Extract (the shard's share of) `image_paths` into the cache; resumes a partial cache."""
    started = time.perf_counter()
    if options.dtype not in DTYPES:
        raise InputError(f"--dtype: expected one of {', '.join(DTYPES)}, got {options.dtype!r}")
    if options.image_size < 32 or options.image_size % 32:
        raise InputError(f"--image-size: expected a multiple of 32 (ResNet's stride), got {options.image_size}")
    if options.batch_size < 1:
        raise InputError(f"--batch-size: expected at least 1, got {options.batch_size}")
    if not image_paths:
        raise InputError(f"dataset {options.dataset!r}: the image list is empty")
    device = _device(options.device)
    weights = resolve_weights(options.weights)
    key = CacheKey(options.dataset, "resnet101", weights.key, options.image_size, options.dtype)
    grid = options.image_size // 32
    identity = {
        **key.as_dict(),
        "weights_sha256": weights.sha256,
        "preprocessing": describe_preprocessing(options.image_size),
        "shape": [2048, grid, grid],
        "count": len(image_paths),
        "images_sha256": images_digest(image_paths, data_root),
        "command": options.command,
    }
    folder = default_cache_dir(options.cache_dir) / key.folder_name()
    writer = FeatureStoreWriter(folder, identity, options.shard)
    try:
        mine = shard_indices(len(image_paths), *options.shard)
        done = writer.present()
        todo = np.setdiff1d(mine, done)
        already = len(mine) - len(todo)
        skipped: dict[int, str] = {}
        if not options.skip_bad:
            absent = [int(i) for i in todo if not Path(image_paths[int(i)]).is_file()]
            if absent:
                more = f" (and {len(absent) - 1} more missing)" if len(absent) > 1 else ""
                raise InputError(f"{image_paths[absent[0]]}: image file not found{more}; fix the data root or "
                                 f"pass --skip-bad to skip unreadable images")
        written = 0
        if len(todo):
            written, skipped = _run(image_paths, todo, already, len(mine), writer, weights, device, options)
        meta = writer.finish()
        return ExtractResult(folder, written, already, {int(k): v for k, v in meta["skipped"].items()},
                             bool(meta["complete"]), time.perf_counter() - started)
    finally:
        writer.close()


def _run(image_paths, todo, already, total, writer, weights, device, options) -> tuple[int, dict[int, str]]:
    from tqdm import tqdm

    model = build_backbone(weights).to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    loader = torch.utils.data.DataLoader(
        ImageFiles(image_paths, todo, options.image_size), batch_size=options.batch_size, shuffle=False,
        num_workers=max(0, options.workers), collate_fn=_collate, pin_memory=cuda,
    )
    shard = f" shard {options.shard[0]}/{options.shard[1]}" if options.shard[1] > 1 else ""
    bar = tqdm(total=total, initial=already, unit="img", desc=f"extract {options.dataset}{shard}",
               file=sys.stderr, dynamic_ncols=True, disable=not options.progress)
    written = 0
    skipped: dict[int, str] = {}
    try:
        for indices, images, errors in loader:
            bad = {int(i): e for i, e in zip(indices, errors, strict=True) if e is not None}
            if bad and not options.skip_bad:
                i, err = next(iter(bad.items()))
                raise InputError(f"{image_paths[i]}: cannot read image ({err}); fix or remove it, or pass "
                                 f"--skip-bad to skip unreadable images and list them in the cache metadata")
            ok = np.array([e is None for e in errors])
            batch_skipped = {i: f"{image_paths[i]}: {e}" for i, e in bad.items()}
            feats = np.zeros((0, 2048, 1, 1), dtype=np.float32)
            if ok.any():
                with torch.inference_mode():
                    x = images[torch.from_numpy(ok)].to(device, non_blocking=True)
                    feats = model(x).float().cpu().numpy()  # [b, 2048, S/32, S/32]
            writer.write_batch(indices[ok], feats, batch_skipped)
            written += int(ok.sum())
            skipped.update(batch_skipped)
            bar.update(len(indices))
            if skipped:
                bar.set_postfix(skipped=len(skipped))
    finally:
        bar.close()
    return written, skipped
