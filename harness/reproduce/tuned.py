"""The best configuration of a finished search, to reproduce a table with tuned settings beside the
paper's (`--tuned SOURCE`).

SOURCE may be
- a search's storage folder (`python -m harness.search --storage DIR`): its `search.json`
  manifest, whose `models.<model>.summary` holds `dataset`, `model` and `best_config` once the
  model's search is done;
- a JSON file (or a folder holding `best_config.json` / `summary.json`): harness.search's
  `summary.json`, a flat dict of TrainConfig fields, one under "best_config" / "config", a list
  of them, or a dict of such keyed by model;
- an MLflow run id (or `runs:/<id>`) of a search's parent run: its `tables/summary.json` (or
  `best_config.json`) artifact, else its `best.*` / `best_*` params, else the params of its child
  runs of stage "final" (the retrain of the best configuration, params = TrainConfig.as_params()).
Only the hyperparameters a method declares (harness.methods.method_hyperparameters), plus epochs
and batch size, are carried over: the ablation switches stay those of the table's row.
"""

from __future__ import annotations

import json
import re
import tempfile
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path

from harness.config import TrainConfig
from harness.errors import InputError

SWITCHES = ("dense_attention", "attribute_attention", "self_calibration", "trainable_semantics")
CARRIED = ("epochs", "batch_size")
SEARCH_MANIFEST = "search.json"  # the search state's MANIFEST
CANDIDATE_FILES = ("best_config.json", "best_configs.json", "best.json", "summary.json")
RUN_ARTIFACTS = ("tables/summary.json", "summary.json", "best_config.json", "best_configs.json")
RUN_ID = re.compile(r"^(runs:/)?([0-9a-f]{32})/?$")


@dataclass(frozen=True)
class TunedConfig:
    model: str
    dataset: str | None  # None: applies to any dataset
    values: dict[str, object]  # TrainConfig field -> typed value
    source: str


def _field_types() -> dict[str, object]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _convert(name: str, raw: object, kind: object) -> object:
    """A param value (often a string from MLflow) as the TrainConfig field's type."""
    args = typing.get_args(kind)  # (int, NoneType) for `int | None`
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), kind) if args else kind
    if base is str and not optional and isinstance(raw, str):
        return raw  # a plain string field (e.g. amp='none'): 'none' is a value, not a missing one
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "default", "all", "")):
        if optional:
            return None
        raise ValueError(f"{name}: {raw!r} is not allowed here")
    if base is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise ValueError(f"{name}: {raw!r} is not a boolean")
    if base is int:
        value = float(raw)
        if value != int(value):
            raise ValueError(f"{name}: {raw!r} is not an integer")
        return int(value)
    if base is float:
        return float(raw)
    return str(raw)


def typed_values(params: dict[str, object], where: str) -> dict[str, object]:
    """TrainConfig fields from a params dict ('lambda' accepted for lam); other keys are ignored."""
    kinds = _field_types()
    out: dict[str, object] = {}
    for key, raw in params.items():
        name = "lam" if key == "lambda" else key
        if name not in kinds:
            continue
        try:
            out[name] = _convert(name, raw, kinds[name])
        except (TypeError, ValueError) as err:
            raise InputError(f"--tuned {where}: {err}") from err
    return out


def _from_dict(values: dict, where: str) -> TunedConfig:
    typed = typed_values(values, where)
    if "model" not in typed:
        raise InputError(f"--tuned {where}: the configuration names no 'model'")
    return TunedConfig(str(typed["model"]), typed.get("dataset"), typed, where)


def parse_json(data: object, where: str) -> list[TunedConfig]:
    """Every layout named in the module docstring."""
    if isinstance(data, list):
        return [c for item in data for c in parse_json(item, where)]
    if not isinstance(data, dict):
        raise InputError(f"--tuned {where}: expected a JSON object or list, got {type(data).__name__}")
    for key in ("best_config", "best_configs", "config", "best"):
        if key in data and isinstance(data[key], dict | list):
            inner = data[key]
            if isinstance(inner, dict) and "model" not in inner and "model" in data:
                inner = {**inner, "model": data["model"], **({"dataset": data["dataset"]} if "dataset" in data else {})}
            return parse_json(inner, where)
    if "model" in data:
        return [_from_dict(data, where)]
    nested = [v for v in data.values() if isinstance(v, dict)]
    if nested:
        return [c for item in nested for c in parse_json(item, where)]
    raise InputError(f"--tuned {where}: no configuration with a 'model' key found")


def _read_json(path: Path) -> list[TunedConfig]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"--tuned {path}: not readable JSON ({err})") from err
    return parse_json(data, str(path))


def parse_manifest(data: object, where: str) -> list[TunedConfig]:
    """harness.search's search.json: the best configuration of every model whose search is done."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise InputError(f"--tuned {where}: not a search manifest (no 'models' object)")
    default_dataset = (data.get("settings") or {}).get("dataset")
    found = []
    for model, entry in data["models"].items():
        summary = (entry or {}).get("summary") or {}
        if isinstance(summary.get("best_config"), dict):
            values = {"model": summary.get("model", model), "dataset": summary.get("dataset", default_dataset),
                      **summary["best_config"]}
            found.append(_from_dict(values, f"{where} [{model}]"))
    if not found:
        stages = {m: (e or {}).get("stage") for m, e in data["models"].items()}
        raise InputError(f"--tuned {where}: no model of this search is done yet (stages {stages}); "
                         "resume it with python -m harness.search --resume --storage DIR")
    return found


def _from_folder(folder: Path) -> list[TunedConfig]:
    manifest = folder / SEARCH_MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"--tuned {manifest}: not readable JSON ({err})") from err
        return parse_manifest(data, str(manifest))
    for name in CANDIDATE_FILES:
        hits = [folder / name] if (folder / name).is_file() else sorted(folder.glob(f"**/{name}"))
        if hits:
            return [c for hit in hits for c in _read_json(hit)]
    raise InputError(f"--tuned {folder}: no {SEARCH_MANIFEST}, best_config.json or summary.json here; pass the "
                     "search's storage folder or its MLflow parent run id")


def _from_run(run_id: str, tracking_uri: str) -> list[TunedConfig]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    where = f"run {run_id}"
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise InputError(f"--tuned {run_id}: no such MLflow run in {tracking_uri}") from err
    names: set[str] = set()
    try:
        for item in client.list_artifacts(run_id):
            names.add(item.path)
            if item.is_dir:
                names.update(a.path for a in client.list_artifacts(run_id, item.path))
    except (MlflowException, OSError):
        pass
    for name in RUN_ARTIFACTS:
        if name in names:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(run_id, name, tmp)
                return [replace(c, source=f"{where}:{name}") for c in _read_json(Path(local))]
    params = run.data.params
    best = {k.split(".", 1)[1] if k.startswith("best.") else k[5:]: v
            for k, v in params.items() if k.startswith(("best.", "best_"))}
    if "model" in best or ("model" in params and best):
        merged = {"model": params.get("model"), "dataset": params.get("dataset"), **best}
        return [_from_dict(merged, where)]
    if params.get("stage") == "final" and "model" in params:
        return [_from_dict(params, where)]
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}' and params.stage = 'final'",
        max_results=1000,
    )
    found: dict[tuple, TunedConfig] = {}
    for child in children:
        config = _from_dict(child.data.params, f"{where} child {child.info.run_id}")
        key = (config.model, config.dataset)
        found.setdefault(key, config)  # seeds of one final retrain share the configuration
    if not found:
        raise InputError(f"--tuned {run_id}: the run has no best_config.json artifact, no best.* params "
                         "and no child run of stage 'final'")
    return list(found.values())


def load_tuned(source: str, tracking_uri: str) -> list[TunedConfig]:
    path = Path(source)
    if path.is_file() and path.name == SEARCH_MANIFEST:
        return _from_folder(path.parent)
    if path.is_file():
        return _read_json(path)
    if path.is_dir():
        return _from_folder(path)
    match = RUN_ID.match(source.strip())
    if match:
        return _from_run(match.group(2), tracking_uri)
    raise InputError(f"--tuned {source}: not a file, a folder or an MLflow run id (32 hex digits or runs:/<id>)")


def pick(tuned: list[TunedConfig], model: str, dataset: str) -> TunedConfig | None:
    """The tuned configuration for this model on this dataset (or one tuned for any dataset)."""
    for wanted in (dataset, None):
        for config in tuned:
            if config.model == model and config.dataset == wanted:
                return config
    return None


def apply_tuned(base: TrainConfig, tuned: TunedConfig) -> TrainConfig:
    """`base` with the tuned hyperparameters of its method; switches and data options stay base's."""
    from harness.methods import method_hyperparameters  # imports torch: not at --help time

    keys = (set(method_hyperparameters(base.model)) - set(SWITCHES)) | set(CARRIED)
    return replace(base, **{k: v for k, v in tuned.values.items() if k in keys}).validate()
