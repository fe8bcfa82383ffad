"""fit(config) -> metrics: the one trainable every CLI run, search trial, final retrain and
reproduction fit calls (`python -m harness.train` is its command line).

Search stage: fit on the train classes, report validation GZSL (held-out train-class images as
"seen", validation classes as "unseen") every epoch, never touch a test image.
Final stage: fit on trainval for the fixed number of epochs (nothing is selected on test), then
evaluate once on test_seen / test_unseen.

A fit can be checkpointed after any step and resumed from it (`fit(..., checkpoint=, resume=)`):
the state (`TrainState`) is the method's (module, optimiser, running sums), the sampler's random
state at the epoch's start plus the steps the trainer consumed, the torch and numpy random states,
the epoch's losses so far and the history. On the same host and thread count a resumed fit ends
with exactly the metrics of the uninterrupted one (tests/test_trainer_resume.py).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import ConfigError, TrainConfig
from harness.data.base import GZSLDataset
from harness.data.registry import load_dataset
from harness.data.sampling import ClassBalancedSampler
from harness.data.semantics import select_attributes
from harness.data.splits import ProtocolView, make_view
from harness.errors import InputError
from harness.features.loader import PrefetchingBatches, ResidentFeatures, make_resident
from harness.methods import MethodSpec, ZSLMethod, build_method
from harness.metrics import (
    GZSLMetrics,
    SeenUnseenCurve,
    best_calibration_shift,
    evaluate_scores,
    gzsl_accuracies,
)

Reporter = Callable[[dict[str, float]], None]
# Called after every training step with the method and the step's number (1-based, over all
# epochs). Only the diagnostic harness.reproduce.protocol passes one; fit's result is unchanged.
StepCallback = Callable[[ZSLMethod, int], None]


TRAIN_STATE_TENSORS, TRAIN_STATE_JSON = "train_state.pt", "train_state.json"


@dataclass
class TrainState:
    """Where a fit is, as the trainer consumed it (not as the prefetcher read ahead)."""

    epoch: int  # the epoch in progress, 1-based
    step: int  # its steps done; == steps per epoch: the epoch ended, its end-of-epoch work done
    global_step: int
    method: dict  # method.save_state(): tensors and plain containers
    sampler: dict  # the sampler's random state at the epoch's start (JSON)
    losses: list[float]  # the epoch's losses so far (a report carries their mean)
    history: list[dict[str, float]]
    torch_rng: torch.Tensor
    numpy_rng: list  # np.random.get_state() as plain lists


def save_train_state(state: TrainState, folder: str | Path) -> None:
    """Tensors to train_state.pt (torch.save), the rest to train_state.json; each file written
    whole (temp file + rename), the JSON last, so a folder with the JSON holds both."""
    folder = Path(folder)
    tensors = {"method": state.method, "torch_rng": state.torch_rng}
    plain = {"epoch": state.epoch, "step": state.step, "global_step": state.global_step, "sampler": state.sampler,
             "losses": state.losses, "history": state.history, "numpy_rng": state.numpy_rng}
    for name, write in ((TRAIN_STATE_TENSORS, lambda f: torch.save(tensors, f)),
                        (TRAIN_STATE_JSON, lambda f: f.write(json.dumps(plain).encode()))):
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, folder / name)


def load_train_state(folder: str | Path) -> TrainState | None:
    """The state `save_train_state` wrote in `folder`, or None when it holds none (an older checkpoint)."""
    folder = Path(folder)
    if not (folder / TRAIN_STATE_JSON).is_file():
        return None
    plain = json.loads((folder / TRAIN_STATE_JSON).read_text())
    tensors = torch.load(folder / TRAIN_STATE_TENSORS, map_location="cpu", weights_only=True)
    return TrainState(epoch=plain["epoch"], step=plain["step"], global_step=plain["global_step"],
                      method=tensors["method"], sampler=plain["sampler"], losses=plain["losses"],
                      history=plain["history"], torch_rng=tensors["torch_rng"], numpy_rng=plain["numpy_rng"])


# Called after every training step (after its validation pass, if any) with the epoch, the global
# step and a function that builds the TrainState (only when the hook decides to save one).
StepHook = Callable[[int, int, Callable[[], TrainState]], None]


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


@dataclass
class FitResult:
    config: TrainConfig
    metrics: dict[str, float]
    history: list[dict[str, float]]
    method: ZSLMethod
    view: ProtocolView
    attributes: np.ndarray  # indices of the attributes used
    curve: SeenUnseenCurve | None = None
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)


class SequentialPass:
    """Every fit image exactly once per epoch, in order, in batches of `batch_size` (the last may
    be smaller): what closed-form methods need to accumulate their sums (`sampling = "sequential"`)."""

    def __init__(self, num_images: int, batch_size: int) -> None:
        self.num_images = num_images
        self.batch_size = batch_size

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.num_images / self.batch_size))

    def epoch(self, start_step: int = 0) -> Iterator[np.ndarray]:
        for start in range(start_step * self.batch_size, self.num_images, self.batch_size):
            yield np.arange(start, min(start + self.batch_size, self.num_images))

    def state(self) -> dict[str, Any]:
        return {}  # the order is fixed: the step alone says where an epoch is

    def load_state(self, state: dict[str, Any], consumed: int) -> None:
        pass


def make_sampler(method: ZSLMethod, labels: np.ndarray, config: TrainConfig):
    """The method's `sampling` attribute picks the batches: "class_balanced" (default) or "sequential"."""
    sampling = getattr(method, "sampling", "class_balanced")
    if sampling == "sequential":
        return SequentialPass(len(labels), config.batch_size)
    if sampling == "class_balanced":
        return ClassBalancedSampler(labels, config.batch_size, seed=config.seed)
    raise ValueError(f"{config.model}: unknown sampling {sampling!r}; expected 'class_balanced' or 'sequential'")


def metric_prefix(stage: str) -> str:
    return "val_" if stage == "search" else "test_"


def _device(config: TrainConfig) -> torch.device:
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {config.device}: no CUDA device is visible on this node")
    return torch.device(config.device)


def resolve_dataset(config: TrainConfig) -> GZSLDataset:
    return load_dataset(
        config.dataset, data_root=config.data_root, cache_dir=config.cache_dir,
        word_vectors=config.word_vectors, data_seed=config.data_seed,
    )


def build_spec(view: ProtocolView, config: TrainConfig) -> tuple[MethodSpec, np.ndarray]:
    num_attr = view.class_attributes.shape[1]
    if config.num_attributes is not None and config.num_attributes > num_attr:
        raise ConfigError(f"--num-attributes: got {config.num_attributes}, the dataset has {num_attr} attributes")
    attributes = select_attributes(view.class_attributes, config.num_attributes)
    spec = MethodSpec(
        class_semantics=torch.from_numpy(view.class_attributes[:, attributes]),
        attribute_semantics=torch.from_numpy(view.attribute_vectors[attributes]),
        seen_classes=torch.from_numpy(view.seen_classes),
        unseen_classes=torch.from_numpy(view.unseen_classes),
        feature_dim=view.features.feature_dim,
        num_regions=view.features.num_regions,
    )
    return spec, attributes


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    if device.type == "cuda":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor


def predict_scores(method: ZSLMethod, view: ProtocolView, indices: np.ndarray, config: TrainConfig) -> np.ndarray:
    device = _device(config)
    out = []
    for start in range(0, len(indices), config.eval_batch_size):
        batch = view.features.read(indices[start : start + config.eval_batch_size])
        out.append(method.scores(_to_device(batch, device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, view.num_classes), dtype=np.float32)


def evaluate(method: ZSLMethod, view: ProtocolView, config: TrainConfig) -> tuple[GZSLMetrics, SeenUnseenCurve, dict]:
    """Protocol metrics of `view`'s evaluation splits, plus the raw scores for plots."""
    s_seen = predict_scores(method, view, view.eval_seen_indices, config)
    s_unseen = predict_scores(method, view, view.eval_unseen_indices, config)
    margin = method.prediction_margin()
    margin_np = None if margin is None else margin.detach().cpu().numpy()
    metrics, curve = evaluate_scores(
        s_seen, view.eval_seen_labels, s_unseen, view.eval_unseen_labels,
        view.seen_classes, view.unseen_classes, margin_np,
    )
    return metrics, curve, {"scores_seen": s_seen, "scores_unseen": s_unseen}


def calibrated_stacking(
    scores: dict, view: ProtocolView, shift: float
) -> tuple[float, float, float]:
    """GZSL accuracies with `shift` subtracted from seen-class scores (no model margin)."""
    penalty = np.zeros(view.num_classes, dtype=np.float32)
    penalty[view.seen_classes] = -shift
    return gzsl_accuracies(
        scores["scores_seen"], view.eval_seen_labels, scores["scores_unseen"], view.eval_unseen_labels, penalty
    )


def stacking_shift(curve: SeenUnseenCurve) -> float:
    """gamma for calibrated stacking: the middle of the best interval of the seen-unseen sweep.

    The sweep's shifts are the images' seen-minus-unseen score gaps, and every gamma from one
    shift up to the next predicts the same. best_calibration_shift returns the interval's left
    end, which equals one image's gap exactly: subtracting it from float32 scores then flips
    that image either way (the H reported for it was not reproduced), and a retrained model
    meets a threshold with no clearance. The midpoint predicts as the whole interval does.
    """
    best = best_calibration_shift(curve)
    k = int(np.flatnonzero(curve.shifts == best)[0])
    if k + 1 >= len(curve.shifts):
        return best  # the top end already sends every image to an unseen class
    return float((curve.shifts[k] + curve.shifts[k + 1]) / 2)


def _validation_shift(config: TrainConfig, dataset: GZSLDataset, progress: bool = False) -> float:
    """gamma for calibrated stacking, chosen on validation classes by a search-stage fit."""
    result = fit(replace(config, stage="search", calibrated_stacking=False), dataset, progress=progress)
    return float(result.extras["best_shift"])


def attention_hit_rate(method: ZSLMethod, view: ProtocolView, dataset: GZSLDataset, attributes: np.ndarray,
                       config: TrainConfig, max_images: int = 400) -> dict[str, float] | None:
    """How often the arg-max region of alpha is the true cell of the attribute's part.

    Only for datasets that record part positions (synthetic) and methods with attention.
    `attention_hit_rate` counts every attribute of every visible part; `_present` only the
    attributes the image shows. Chance is 1 / #regions.
    """
    truth = dataset.annotations.get("part_regions")
    if truth is None or not hasattr(method, "attention"):
        return None
    device = _device(config)
    images = np.concatenate([view.eval_seen_indices, view.eval_unseen_indices])[:max_images]
    attribute_part = dataset.annotations["attribute_part"][attributes]
    hits = total = hits_present = total_present = 0
    for start in range(0, len(images), config.eval_batch_size):
        idx = images[start : start + config.eval_batch_size]
        att = method.attention(_to_device(view.features.read(idx), device)).cpu().numpy()  # [B, A, R]
        argmax = att.argmax(-1)  # [B, A]
        true_cell = truth[idx][:, attribute_part]  # [B, A], -1 when the part is hidden
        visible = true_cell >= 0
        hit = (argmax == true_cell) & visible
        hits += int(hit.sum())
        total += int(visible.sum())
        shown = dataset.annotations.get("shown_attributes")
        if shown is not None:
            present = shown[idx][:, attributes] & visible
            hits_present += int((hit & present).sum())
            total_present += int(present.sum())
    out = {"attention_hit_rate": hits / max(total, 1), "attention_chance": 1.0 / view.features.num_regions}
    if total_present:
        out["attention_hit_rate_present"] = hits_present / total_present
    return out


@dataclass
class _FitRun:
    """Everything one fit builds before its first step, and what it records as it goes."""

    config: TrainConfig
    dataset: GZSLDataset
    view: ProtocolView
    device: torch.device
    method: ZSLMethod
    attributes: np.ndarray
    sampler: ClassBalancedSampler | SequentialPass
    epochs: int
    steps: int  # per epoch
    report_every: int  # search stage: steps between validation passes
    prefix: str  # "val_" or "test_"
    history: list[dict[str, float]] = field(default_factory=list)
    last_eval: tuple[GZSLMetrics, SeenUnseenCurve, dict] | None = None
    on_step: StepCallback | None = None  # the protocol diagnostic's per-step hook
    resident: ResidentFeatures | None = None  # the fit images on the device (config.resident)


def _resident_features(view: ProtocolView, device: torch.device, config: TrainConfig) -> ResidentFeatures | None:
    """The fit images held on the device when config.resident asks and they fit; one line says what
    was decided whenever it is not the plain default (auto on a CPU)."""
    resident, why = make_resident(view.features, view.fit_indices, device, mode=config.resident,
                                  fraction=config.resident_fraction)
    if config.resident != "off" and (resident is not None or config.resident == "on" or device.type == "cuda"):
        print(why, file=sys.stderr)
    return resident


def _prepare(config: TrainConfig, dataset: GZSLDataset | None, progress: bool) -> _FitRun:
    """Threads, dataset, the stage's view, seeds, the method and its sampler: all before training."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    dataset = dataset if dataset is not None else resolve_dataset(config)
    if config.calibrated_stacking and config.stage == "final" and config.calibration_shift is None:
        config = replace(config, calibration_shift=_validation_shift(config, dataset, progress))
    view = make_view(dataset, config.stage)
    device = _device(config)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    spec, attributes = build_spec(view, config)
    method = build_method(config.model, spec, config, device)
    sampler = make_sampler(method, view.fit_labels, config)
    steps = sampler.steps_per_epoch()
    return _FitRun(
        config=config, dataset=dataset, view=view, device=device, method=method, attributes=attributes,
        sampler=sampler, epochs=method.default_epochs or config.epochs or dataset.default_epochs, steps=steps,
        report_every=max(1, math.ceil(steps / config.reports_per_epoch)), prefix=metric_prefix(config.stage),
        resident=_resident_features(view, device, config),
    )


def _progress_bar(run: _FitRun, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    config = run.config
    return tqdm(total=run.epochs * run.steps, desc=f"{config.model} {config.dataset} [{config.stage}]",
                unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def _validation_pass(run: _FitRun, epoch: int, step: int, losses: list[float], reporter: Reporter | None,
                     bar) -> None:
    """Search stage: evaluate on the validation classes, record and report (what ASHA schedules on)."""
    if step == run.steps:
        run.method.end_epoch()
    run.last_eval = evaluate(run.method, run.view, run.config)
    metrics = run.last_eval[0]
    record = {"epoch": epoch, "step": (epoch - 1) * run.steps + step, "loss": float(np.mean(losses)),
              **metrics.as_dict(run.prefix)}
    run.history.append(record)
    if bar is not None:
        bar.set_postfix(epoch=epoch, loss=f"{record['loss']:.3f}", val_H=f"{metrics.H:.3f}")
    if reporter is not None:
        reporter(record)


def _end_final_epoch(run: _FitRun, epoch: int, losses: list[float], reporter: Reporter | None) -> None:
    """Final stage: no evaluation during training (nothing is selected on test), only the loss."""
    run.method.end_epoch()
    record = {"epoch": epoch, "step": epoch * run.steps, "loss": float(np.mean(losses))}
    run.history.append(record)
    if reporter is not None:
        reporter(record)


def _train_state(run: _FitRun, epoch: int, step: int, losses: list[float]) -> TrainState:
    keys, *rest = np.random.get_state(legacy=True)[1:]
    return TrainState(
        epoch=epoch, step=step, global_step=(epoch - 1) * run.steps + step, method=run.method.save_state(),
        sampler=run.sampler.state(), losses=list(losses), history=[dict(h) for h in run.history],
        torch_rng=torch.get_rng_state(), numpy_rng=["MT19937", keys.tolist(), *[float(v) for v in rest]],
    )


def _restore(run: _FitRun, state: TrainState) -> tuple[int, int, list[float] | None]:
    """Load a checkpoint into a freshly prepared fit; (epoch, step done in it, its losses) to go on from."""
    if not 1 <= state.epoch <= run.epochs or not 0 <= state.step <= run.steps:
        raise ValueError(f"checkpoint at epoch {state.epoch}, step {state.step} does not fit this run "
                         f"({run.epochs} epochs of {run.steps} steps)")
    run.method.load_state(state.method)
    run.sampler.load_state(state.sampler, state.step)
    torch.set_rng_state(state.torch_rng)
    name, keys, pos, has_gauss, cached = state.numpy_rng
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    run.history = [dict(h) for h in state.history]
    if state.step == run.steps:
        return state.epoch + 1, 0, None
    return state.epoch, state.step, list(state.losses)


def _train_epoch(run: _FitRun, epoch: int, reporter: Reporter | None, bar, hook: StepHook | None = None,
                 start_step: int = 0, losses: list[float] | None = None) -> None:
    losses = losses if losses is not None else []
    order = run.sampler.epoch(start_step)
    batches = (run.resident.batches(order, index_of=run.view.fit_indices) if run.resident is not None
               else PrefetchingBatches(run.view.features, order, run.device, index_of=run.view.fit_indices))
    for step, (positions, x) in enumerate(batches, start=start_step + 1):
        y = torch.from_numpy(run.view.fit_labels[positions]).to(run.device)
        loss = run.method.train_step(x, y)["loss"]
        if not math.isfinite(loss):
            raise DivergenceError(epoch, (epoch - 1) * run.steps + step, loss)
        losses.append(loss)
        if run.on_step is not None:
            run.on_step(run.method, (epoch - 1) * run.steps + step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
        if run.config.stage == "search" and (step % run.report_every == 0 or step == run.steps):
            _validation_pass(run, epoch, step, losses, reporter, bar)
        if run.config.stage == "final" and step == run.steps:
            _end_final_epoch(run, epoch, losses, reporter)
        if hook is not None:
            hook(epoch, (epoch - 1) * run.steps + step, functools.partial(_train_state, run, epoch, step, losses))


def _final_metrics(run: _FitRun) -> tuple[dict[str, float], SeenUnseenCurve, dict]:
    """The stage's metrics of the trained model, with calibrated stacking and the attention hit rate."""
    config, prefix = run.config, run.prefix
    # The search stage's last report already evaluated the final model; the final stage evaluates here, once.
    metrics, curve, scores = run.last_eval if run.last_eval is not None else evaluate(run.method, run.view, config)
    final = {**metrics.as_dict(prefix), "loss": run.history[-1]["loss"] if run.history else float("nan")}
    extras: dict = {"scores": scores}
    if config.stage == "search":  # the shift is chosen on validation classes only, never on the test curve
        final[f"{prefix}best_shift"] = extras["best_shift"] = stacking_shift(curve)
    if config.calibrated_stacking:
        gamma = extras["best_shift"] if config.stage == "search" else float(config.calibration_shift)
        cs = calibrated_stacking(scores, run.view, gamma)
        final.update({f"{prefix}cs_acc_seen": cs[0], f"{prefix}cs_acc_unseen": cs[1], f"{prefix}cs_H": cs[2],
                      "calibration_shift": gamma})
    hit = attention_hit_rate(run.method, run.view, run.dataset, run.attributes, config)
    if hit:
        final.update(hit)
    return final, curve, extras


def fit(
    config: TrainConfig,
    dataset: GZSLDataset | None = None,
    reporter: Reporter | None = None,
    progress: bool = False,
    on_step: StepCallback | None = None,
    checkpoint: StepHook | None = None,
    resume: TrainState | None = None,
) -> FitResult:
    """Train `config.model` on the view of `config.stage` and return the protocol metrics.

    `reporter` receives a metrics dict after every validation pass (each epoch, or
    `reports_per_epoch` times an epoch), which is what ASHA schedules on; in the final stage it
    receives the loss after each epoch. `checkpoint` is called after every step (see StepHook);
    `resume` continues from a TrainState it saved, running only the steps after it. `on_step`
    (optional) is called after every training step with the method and the step number; it must
    not train the method.
    """
    config.validate()
    started = time.perf_counter()
    run = _prepare(config, dataset, progress)
    run.on_step = on_step
    start_epoch, start_step, losses = _restore(run, resume) if resume is not None else (1, 0, None)
    bar = _progress_bar(run, progress)
    if bar is not None:
        bar.update((start_epoch - 1) * run.steps + start_step)
    try:
        for epoch in range(start_epoch, run.epochs + 1):
            first = epoch == start_epoch
            _train_epoch(run, epoch, reporter, bar, checkpoint, start_step if first else 0, losses if first else None)
    finally:
        if bar is not None:
            bar.close()
    final, curve, extras = _final_metrics(run)
    return FitResult(run.config, final, run.history, run.method, run.view, run.attributes, curve,
                     time.perf_counter() - started, extras)
