"""From a model's plain-data search space (search_spaces/<model>.py) to what Optuna samples.

The space modules hold no Optuna or Ray objects (they are data); this module resolves the
dataset-dependent bounds ("all" attributes), converts each entry to an Optuna distribution and
turns the paper defaults into the first point to evaluate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import search_spaces
from harness.config import TrainConfig
from harness.errors import InputError
from search_spaces import KNOWN_TYPES


@dataclass(frozen=True)
class ResolvedSpace:
    """A model's space with "all" resolved for one dataset."""

    model: str
    params: dict[str, dict[str, Any]]  # the plain-data entries, bounds resolved
    defaults: dict[str, Any]  # the paper configuration, resolved

    def distributions(self) -> dict:
        """{name: optuna distribution}, the form OptunaSearch(space=...) takes."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out = {}
        for name, spec in self.params.items():
            kind = spec["type"]
            if kind == "loguniform":
                out[name] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=True)
            elif kind == "uniform":
                out[name] = FloatDistribution(float(spec["low"]), float(spec["high"]))
            elif kind == "int":
                out[name] = IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
            else:
                out[name] = CategoricalDistribution(list(spec["choices"]))
        return out

    def contains(self, point: dict[str, Any]) -> bool:
        """Whether `point` lies in the space (used to check the enqueued defaults)."""
        for name, spec in self.params.items():
            if name not in point:
                return False
            value = point[name]
            if spec["type"] == "categorical":
                if value not in spec["choices"]:
                    return False
            elif not spec["low"] <= value <= spec["high"]:
                return False
        return True


def has_space(model: str) -> bool:
    return search_spaces.exists(model)


def _resolve(value: Any, num_attributes: int) -> Any:
    return num_attributes if value == "all" else value


def check_space(model: str, space: dict, defaults: dict) -> None:
    """The one validator of a space: InputError naming search_spaces/<model>.py and the key."""
    fields = set(TrainConfig.__dataclass_fields__)
    for key, spec in space.items():
        where = f"search_spaces/{model}.py: {key!r}"
        if key not in fields:
            raise InputError(f"{where} is not a TrainConfig field; expected one of {sorted(fields)}")
        kind = spec.get("type")
        if kind not in KNOWN_TYPES:
            raise InputError(f"{where}: type {kind!r}, expected one of {KNOWN_TYPES}")
        if kind == "categorical":
            if not spec.get("choices"):
                raise InputError(f"{where}: categorical needs a non-empty 'choices'")
            continue
        low, high = spec.get("low"), spec.get("high")
        if low is None or high is None:
            raise InputError(f"{where}: needs 'low' and 'high'")
        if not low < high:
            raise InputError(f"{where}: low {low} must be below high {high}")
        if kind == "loguniform" and low <= 0:
            raise InputError(f"{where}: loguniform needs low > 0, got {low}")
    unknown = sorted(set(defaults) - set(space))
    if unknown:
        raise InputError(f"search_spaces/{model}.py: DEFAULTS name parameters outside SPACE: {unknown}")
    # Every value the space allows must be a valid configuration: check its ends (and choices)
    # with TrainConfig's own validation, so a bad space fails here, not in every trial.
    for key, spec in space.items():
        values = spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
        for value in values:
            try:
                TrainConfig(**{key: value}).validate()
            except (InputError, TypeError, ValueError) as err:
                raise InputError(f"search_spaces/{model}.py: {key!r} allows {value!r}, which is invalid ({err})") from err


def resolve_space(model: str, num_attributes: int) -> ResolvedSpace:
    """Load search_spaces/<model>.py and resolve "all" to the dataset's attribute count.

    A bound above the attribute count is clipped to it (a space written for CUB's 312
    attributes still works on a dataset with fewer).
    """
    loaded = search_spaces.load(model)
    space, defaults = loaded.space, dict(loaded.defaults)
    if not isinstance(space, dict) or not space:
        raise InputError(f"search_spaces/{model}.py: SPACE must be a non-empty dict")
    params: dict[str, dict[str, Any]] = {}
    for name, spec in space.items():
        spec = dict(spec)
        for bound in ("low", "high"):
            if bound in spec:
                spec[bound] = _resolve(spec[bound], num_attributes)
        if name == "num_attributes" and spec.get("type") == "int":
            spec["high"] = min(int(spec["high"]), num_attributes)
            spec["low"] = min(int(spec["low"]), spec["high"])
            if spec["low"] == spec["high"]:  # a one-attribute dataset: nothing to search
                spec = {"type": "categorical", "choices": [spec["low"]]}
        params[name] = spec
    check_space(model, params, defaults)
    resolved = {k: _resolve(v, num_attributes) for k, v in defaults.items()}
    if "num_attributes" in resolved and isinstance(resolved["num_attributes"], int):
        resolved["num_attributes"] = min(resolved["num_attributes"], num_attributes)
    # Parameters of the space without a default take TrainConfig's default (the paper's setting).
    base = TrainConfig()
    for name in params:
        if name not in resolved:
            value = getattr(base, name)
            resolved[name] = num_attributes if (name == "num_attributes" and value is None) else value
    out = ResolvedSpace(model, params, resolved)
    if not out.contains(resolved):
        raise InputError(f"search_spaces/{model}.py: DEFAULTS {resolved} lie outside SPACE")
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one trial: the search's fixed settings plus the sampled values."""
    values = dict(base)
    for key, value in params.items():
        if isinstance(value, float) and key == "num_attributes":
            value = int(round(value))
        values[key] = value
    config = TrainConfig.from_dict(values)
    return config.validate()


def same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal configurations (floats compared with a relative tolerance)."""
    if set(a) != set(b):
        return False
    for key, va in a.items():
        vb = b[key]
        if isinstance(va, float) or isinstance(vb, float):
            try:
                if not math.isclose(float(va), float(vb), rel_tol=1e-9, abs_tol=0.0):
                    return False
            except (TypeError, ValueError):
                return False
        elif va != vb:
            return False
    return True
