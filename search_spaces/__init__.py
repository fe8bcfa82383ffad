"""Search spaces as plain data: one module per model, no torch, no Ray, nothing from `harness`.

Each module defines
    SPACE:    {param: {"type": "loguniform"|"uniform"|"int"|"categorical", "low":..., "high":..., "choices": [...]}}
              where an int's "high" may be "all" (the dataset's attribute count, resolved by the harness);
    DEFAULTS: the paper's configuration, enqueued as the first trial so a search never ends worse.
Parameter names are TrainConfig field names (the MLflow parameter names).

`load(model)` is the one way in: every caller (train, compare, search, reproduce) gets a model's
space and defaults from it. Validation against the trainer's config lives in the harness
(`harness.search.space.check_space`), since it needs the trainer's fields.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

KNOWN_TYPES = ("loguniform", "uniform", "int", "categorical")


class UnknownSearchSpace(LookupError):
    """No search_spaces/<model>.py: the message names the option and the expected file."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpace:
    """A model's search space and its defaults, copied out of the module as plain values."""

    model: str
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    def config_defaults(self) -> dict[str, Any]:
        """The defaults as trainer settings: "all" attributes is None (the trainer's "use every one")."""
        return {k: (None if v == "all" else v) for k, v in self.defaults.items()}


def module_name(model: str) -> str:
    return f"search_spaces.{model.replace('-', '_')}"


def load(model: str) -> ModelSpace:
    """search_spaces/<model>.py as plain data; UnknownSearchSpace when there is none."""
    try:
        module = importlib.import_module(module_name(model))
    except ModuleNotFoundError as err:
        if err.name != module_name(model):
            raise
        raise UnknownSearchSpace(f"--model: no search space for {model!r} (expected search_spaces/{model}.py)") from err
    space = getattr(module, "SPACE", None)
    return ModelSpace(
        model=model,
        space={k: dict(v) for k, v in space.items()} if isinstance(space, dict) else space,
        defaults=dict(getattr(module, "DEFAULTS", {})),
    )


def exists(model: str) -> bool:
    try:
        load(model)
    except UnknownSearchSpace:
        return False
    return True
