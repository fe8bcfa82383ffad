"""Search spaces as plain data: one module per model, no torch, no Ray.

Each module defines
    SPACE:    {param: {"type": "loguniform"|"uniform"|"int"|"categorical", "low":..., "high":..., "choices": [...]}}
              where an int's "high" may be "all" (the dataset's attribute count, resolved by the harness);
    DEFAULTS: the paper's configuration, enqueued as the first trial so a search never ends worse.
Parameter names are TrainConfig field names (the MLflow parameter names).
"""

from __future__ import annotations

import importlib
from types import ModuleType

KNOWN_TYPES = ("loguniform", "uniform", "int", "categorical")


def load_space(model: str) -> ModuleType:
    try:
        return importlib.import_module(f"search_spaces.{model.replace('-', '_')}")
    except ModuleNotFoundError as err:
        raise KeyError(f"--model: no search space for {model!r} (expected search_spaces/{model}.py)") from err


def check_space(space: dict, defaults: dict) -> None:
    """Raise ValueError naming the key when a space or its defaults are malformed."""
    for key, spec in space.items():
        kind = spec.get("type")
        if kind not in KNOWN_TYPES:
            raise ValueError(f"search space {key!r}: type {kind!r}, expected one of {KNOWN_TYPES}")
        if kind == "categorical" and not spec.get("choices"):
            raise ValueError(f"search space {key!r}: categorical needs 'choices'")
        if kind != "categorical":
            low, high = spec.get("low"), spec.get("high")
            if low is None or high is None:
                raise ValueError(f"search space {key!r}: needs 'low' and 'high'")
            if high != "all" and not low < high:
                raise ValueError(f"search space {key!r}: low {low} must be below high {high}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"search space {key!r}: loguniform needs low > 0, got {low}")
    unknown = set(defaults) - set(space)
    if unknown:
        raise ValueError(f"defaults name parameters outside the space: {sorted(unknown)}")
