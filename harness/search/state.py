"""The search folder (--storage): what a resumed driver needs to carry on where a dead one stopped.

<storage>/search.json   the settings, the tracking store, the experiment and, per model, the parent
                        run id and how far the model got (searching -> final -> done)
<storage>/<model>/      the Ray Tune experiment of that model (Tuner.restore reads it)
<storage>/results/      result tables and plots, also logged to the parent runs

search.json is written atomically (temp file + rename), so a driver killed at any moment leaves
either the previous or the new version, never half of one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InputError

MANIFEST = "search.json"
VERSION = 1


@dataclass
class SearchState:
    folder: Path
    settings: dict[str, Any]
    tracking_uri: str
    experiment: str
    experiment_id: str = ""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> {parent_run_id, stage, summary}
    created: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    def tune_path(self, model: str) -> Path:
        return self.folder / model

    def results_dir(self, model: str) -> Path:
        return self.folder / "results" / model

    def model(self, name: str) -> dict[str, Any]:
        return self.models.setdefault(name, {"stage": "new"})

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {
            "version": VERSION, "settings": self.settings, "tracking_uri": self.tracking_uri,
            "experiment": self.experiment, "experiment_id": self.experiment_id, "models": self.models,
            "created": self.created,
        }
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, folder: Path) -> SearchState:
        path = folder / MANIFEST
        if not path.is_file():
            raise InputError(f"--storage {folder}: no {MANIFEST} there, so no search to resume")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"--storage {folder}: {MANIFEST} is unreadable ({err})") from err
        if data.get("version") != VERSION:
            raise InputError(f"--storage {folder}: {MANIFEST} has version {data.get('version')}, expected {VERSION}")
        return cls(
            folder=folder, settings=data["settings"], tracking_uri=data["tracking_uri"],
            experiment=data["experiment"], experiment_id=data.get("experiment_id", ""),
            models=data.get("models", {}), created=data.get("created", time.time()),
        )


def default_storage(dataset: str, root: Path | None = None) -> Path:
    """./searches/<dataset>-<timestamp>: a new folder per search."""
    root = root or Path.cwd() / "searches"
    return (root / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()


def latest_storage(dataset: str, root: Path | None = None) -> Path:
    """The most recent search folder of `dataset` under ./searches (what --resume alone picks)."""
    root = root or Path.cwd() / "searches"
    found = sorted(p for p in root.glob(f"{dataset}-*") if (p / MANIFEST).is_file())
    if not found:
        raise InputError(f"--resume: no search of {dataset!r} under {root}; pass --storage DIR")
    return found[-1].resolve()


def check_new_storage(folder: Path) -> None:
    if (folder / MANIFEST).exists():
        raise InputError(
            f"--storage {folder}: already holds a search; pass --resume to continue it or choose another folder"
        )
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--storage {folder}: exists and is not a folder")
    parent = folder if folder.exists() else next((p for p in folder.parents if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK):
        raise InputError(f"--storage {folder}: not writable")
