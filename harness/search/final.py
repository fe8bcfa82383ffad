"""After the search: retrain the chosen configuration on trainval and evaluate once on test.

Each final seed is one Ray task (so finals run on the cluster, in parallel) that logs its own
MLflow child run: test metrics, the checkpoint (the module's state_dict), the resolved config,
the seen-unseen curve and, for attention models, attention maps of a few test images with the
true part positions where the dataset records them. A resumed search reuses a final run that
already finished and reopens one that was cut off, keyed by (parent run, seed).
"""

from __future__ import annotations

import math
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import plots, tracking
from harness.config import TrainConfig
from harness.search.trial import load_on_node, node_name
from harness.trainer import FitResult, fit

TEST_METRICS = ("test_acc_seen", "test_acc_unseen", "test_H", "test_zsl_top1", "test_ausuc")


@dataclass(frozen=True)
class FinalJob:
    config: dict[str, Any]  # TrainConfig fields, stage "final", the seed set
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    git_commit: str
    search_name: str = ""
    source_trial: str = ""
    searched: tuple[str, ...] = ()  # the searched TrainConfig fields: logged as params like the trials'


def _attention_figure(result: FitResult, dataset, folder: Path, images_per_split: int = 2,
                      attributes_per_image: int = 4) -> Path | None:
    """Attention of the first test images of each split (unseen first), for attributes they show."""
    method = result.method
    if not hasattr(method, "attention"):
        return None
    import torch

    view = result.view
    picks = [(i, "unseen") for i in view.eval_unseen_indices[:images_per_split]]
    picks += [(i, "seen") for i in view.eval_seen_indices[:images_per_split]]
    if not picks:
        return None
    shown = dataset.annotations.get("shown_attributes")
    regions = dataset.annotations.get("part_regions")
    attribute_part = dataset.annotations.get("attribute_part")
    grid = int(dataset.annotations.get("grid", round(view.features.num_regions ** 0.5)))
    used = result.attributes
    maps, names, cells, titles = [], [], [], []
    device = next(method.module.parameters()).device
    for image, split in picks:
        feats = torch.from_numpy(view.features.read(np.asarray([image]))).to(device)
        att = method.attention(feats).float().cpu().numpy()[0]  # [K_used, R]
        cols = plots.pick_attributes(None if shown is None else shown[image][used], attributes_per_image)
        maps.append(att[cols])
        names.append([dataset.attribute_names[used[c]] for c in cols])
        if regions is not None and attribute_part is not None:
            cells.append([int(regions[image, attribute_part[used[c]]]) for c in cols])
        label = dataset.class_names[int(dataset.labels[image])]
        titles.append(f"test {split}: {label}")
    true_cells = np.asarray(cells) if cells else None
    return plots.attention_maps(np.stack(maps), grid, titles, names, true_cells, folder / "attention_maps.png")


def _log_artifacts(ref: tracking.RunRef, result: FitResult, dataset, config: TrainConfig) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = folder / "model.pt"
        torch.save(result.method.module.state_dict(), ckpt)
        tracking.log_artifact(ref, ckpt, "checkpoint")
        # The exact configuration (the params are rounded for reading): what programs read back.
        resolved = {"config": asdict(config), "params": config.as_params(),
                    "attributes": [dataset.attribute_names[i] for i in result.attributes],
                    "feature_cache_id": dataset.feature_cache_id}
        tracking.log_json(ref, resolved, "resolved_config.json")
        if result.curve is not None:
            m = result.metrics
            plots.seen_unseen_curve(result.curve.acc_seen, result.curve.acc_unseen, result.curve.ausuc,
                                    folder / "seen_unseen_curve.png",
                                    point=(m.get("test_acc_seen", 0.0), m.get("test_acc_unseen", 0.0)),
                                    title=f"{config.model} on {config.dataset} test, seed {config.seed}")
            tracking.log_artifact(ref, folder / "seen_unseen_curve.png", "plots")
        figure = _attention_figure(result, dataset, folder)
        if figure is not None:
            tracking.log_artifact(ref, figure, "plots")


def run_final(job: FinalJob) -> dict[str, Any]:
    """Train one seed of the chosen configuration on trainval, test once, log it; returns the metrics."""
    config = TrainConfig.from_dict(job.config).validate()
    uri, exp = job.tracking_uri, job.experiment_id
    key = {"kind": "final", "final_seed": str(config.seed)}
    existing = tracking.child_runs(uri, exp, job.parent_run_id, key)
    finished = [r for r in existing if r.info.status == "FINISHED"]
    if finished:
        run = finished[0]
        metrics = {k: run.data.metrics[k] for k in TEST_METRICS if k in run.data.metrics}
        return {"run_id": run.info.run_id, "seed": config.seed, "reused": True, **metrics}
    tags = {**key, "dataset": config.dataset, "model": config.model, "node": socket.gethostname(),
            "ray_node": node_name(), "git_commit": job.git_commit, "search": job.search_name,
            "source_trial": job.source_trial}
    if existing:
        ref = tracking.RunRef(uri, exp, existing[0].info.run_id)
        tracking.reopen_run(ref)
        tracking.set_tags(ref, tags)
    else:
        from harness.methods import run_params

        parent = tracking.RunRef(uri, exp, job.parent_run_id)
        description = (f"The search's best configuration ({job.source_trial or 'best trial'}) retrained on trainval "
                       f"with seed {config.seed} and evaluated once on test; exact values in resolved_config.json.")
        ref = tracking.start_run(uri, exp, f"final-seed{config.seed}", run_params(config, config.epochs or 0, job.searched),
                                 tags, parent, description=description)
    started = time.perf_counter()
    try:
        dataset = load_on_node(config)
        result = fit(config, dataset)
        tracking.set_tags(ref, {"feature_cache_id": dataset.feature_cache_id})
        for record in result.history:
            tracking.log_metrics(ref, {"loss": record["loss"]}, step=int(record["epoch"]))
        final_step = int(result.history[-1]["epoch"]) if result.history else 0
        constant = ("loss", "attention_chance")  # the chance rate is the dataset's, not the run's: a tag
        tracking.log_metrics(ref, {k: v for k, v in result.metrics.items() if k not in constant}, step=final_step)
        if "attention_chance" in result.metrics:
            tracking.set_tags(ref, {"attention_chance": f"{result.metrics['attention_chance']:.4g}"})
        _log_artifacts(ref, result, dataset, config)
    except BaseException as err:
        tracking.set_tags(ref, {"error": f"{type(err).__name__}: {err}"[:5000]})
        tracking.end_run(ref, "FAILED")
        raise
    tracking.end_run(ref, "FINISHED")
    metrics = {k: float(result.metrics[k]) for k in TEST_METRICS if k in result.metrics}
    return {"run_id": ref.run_id, "seed": config.seed, "reused": False,
            "seconds": time.perf_counter() - started, **metrics}


def run_finals(jobs: list[FinalJob], cpus: float, gpus: float, progress: bool = True) -> list[dict[str, Any]]:
    """All seeds as Ray tasks (in parallel where the cluster has room); results in seed order.

    While they retrain, a bar on stderr counts the seeds done, and each seed gets a line as it ends
    (its test H and time): the retrain is a third of a small search's wall time.
    """
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(run_final)
    pending = {task.remote(job): i for i, job in enumerate(jobs)}
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    bar = _final_bar(len(jobs), jobs[0] if jobs else None) if progress else None
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            results[i] = ray.get(done[0])
            if bar is not None:
                bar.write(final_line(results[i], len(jobs) - len(pending), len(jobs)), file=sys.stderr)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [r for r in results if r is not None]


def _final_bar(total: int, job: FinalJob | None):
    from tqdm import tqdm

    model = (job.config.get("model") if job else "") or ""
    return tqdm(total=total, desc=f"final {model} (retrain on trainval, test once)", unit="seed", file=sys.stderr,
                dynamic_ncols=True)


def final_line(result: dict[str, Any], index: int, total: int) -> str:
    """`final seed 1 (2/3): test H 0.5812  acc_s 0.71  acc_u 0.49  in 3.4 s`."""
    parts = [f"final seed {result['seed']} ({index}/{total}):"]
    if "test_H" in result:
        parts.append(f"test H {result['test_H']:.4f}  acc_s {result.get('test_acc_seen', math.nan):.4f}  "
                     f"acc_u {result.get('test_acc_unseen', math.nan):.4f}")
    parts.append("reused from the earlier run" if result.get("reused") else f"in {result.get('seconds', 0.0):.1f} s")
    return "  ".join(parts)


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """mean and (sample) std of every test metric over the seeds."""
    out = {}
    for key in TEST_METRICS:
        values = np.asarray([r[key] for r in results if key in r], dtype=float)
        if values.size:
            std = float(values.std(ddof=1)) if values.size > 1 else 0.0
            out[key] = {"mean": float(values.mean()), "std": std, "n": int(values.size)}
    return out
