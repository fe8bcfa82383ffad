"""The one training configuration: defaults here, CLI and search overrides on top.

Field names are the MLflow parameter names, shared by every model so runs compare in one table.
Defaults are the authors' released settings (DESIGN section 3).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace

from harness.errors import InputError

# Table 4's switches by name; `full` is DAZLE as published.
VARIANTS: dict[str, dict[str, bool]] = {
    "full": {},
    "no-dense-attention": {"dense_attention": False},
    "no-attribute-attention": {"attribute_attention": False},
    "seen-ce": {"self_calibration": False},
    "fixed-semantics": {"trainable_semantics": False},
}


# The parameters every MLflow run logs, whatever its model (TrainConfig.run_params).
COMMON_PARAMS = ("dataset", "model", "stage", "seed", "epochs", "batch_size")


RESIDENT_MODES = ("auto", "on", "off")


def absolute(path: str | None) -> str | None:
    """A path as every node sees it: trials run in Ray workers whose working folder is not the driver's."""
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def add_resident_option(parser) -> None:
    """--resident [auto|on|off] for every CLI that trains (train, search, reproduce)."""
    parser.add_argument("--resident", nargs="?", const="on", choices=RESIDENT_MODES, default="auto",
                        help="hold the fit images on the training device and gather batches there: auto (on "
                             "CUDA when they fit a share of the device), on, off (default auto)")


class ConfigError(InputError, ValueError):
    """A configuration value is out of range; the message names the option."""


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "synthetic"
    model: str = "dazle"
    stage: str = "final"  # "search": train classes vs validation classes; "final": trainval vs test
    seed: int = 0
    epochs: int | None = None  # None: the dataset's default (20, DeepFashion 2)
    batch_size: int = 50
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    # DAZLE
    lam: float = 0.1
    num_attributes: int | None = None  # k lowest-entropy attributes; None: all
    dense_attention: bool = True
    attribute_attention: bool = True
    self_calibration: bool = True
    trainable_semantics: bool = True
    # ESZSL
    eszsl_gamma: float = 1.0
    eszsl_lambda: float = 1.0
    # DeViSE
    margin: float = 0.1
    # Evaluation
    calibrated_stacking: bool = False
    calibration_shift: float | None = None  # gamma from validation; None: choose it on validation
    reports_per_epoch: int = 1  # >1 reports validation several times an epoch (long DeepFashion epochs)
    eval_batch_size: int = 500
    device: str = "cpu"
    amp: str = "none"  # "bf16": bfloat16 autocast for the model's products (GPU); softmax and losses stay fp32
    num_threads: int | None = None
    # "auto": the fit images held on a CUDA device when they fit a share of it (never on the CPU);
    # "on": held on any device when they fit; "off": read from the cache per batch (harness.features.loader)
    resident: str = "auto"
    resident_fraction: float = 1.0  # the trial's share of its device (fractional GPU trials)
    # Data location for real datasets
    data_root: str | None = None
    cache_dir: str | None = None
    word_vectors: str | None = None  # GloVe / word2vec / .npz file for real datasets
    data_seed: int = 0

    def with_variant(self, variant: str) -> TrainConfig:
        if variant not in VARIANTS:
            raise ConfigError(f"--variant: unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        return replace(self, **VARIANTS[variant])

    def validate(self) -> TrainConfig:
        checks = [
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a positive learning rate"),
            ("lam", self.lam >= 0 and math.isfinite(self.lam), "lambda >= 0"),
            ("batch_size", self.batch_size >= 1, "a batch size of at least 1"),
            ("epochs", self.epochs is None or self.epochs >= 1, "at least 1 epoch"),
            ("num_attributes", self.num_attributes is None or self.num_attributes >= 1, "k >= 1"),
            ("weight_decay", self.weight_decay >= 0, "weight decay >= 0"),
            ("momentum", 0 <= self.momentum < 1, "momentum in [0, 1)"),
            ("eszsl_gamma", self.eszsl_gamma > 0, "gamma > 0"),
            ("eszsl_lambda", self.eszsl_lambda > 0, "lambda > 0"),
            ("margin", self.margin >= 0, "margin >= 0"),
            ("stage", self.stage in ("search", "final"), "'search' or 'final'"),
            ("reports_per_epoch", self.reports_per_epoch >= 1, "at least 1"),
            ("amp", self.amp in ("none", "bf16"), "'none' or 'bf16'"),
            ("resident", self.resident in RESIDENT_MODES, "'auto', 'on' or 'off'"),
            ("resident_fraction", 0 < self.resident_fraction <= 1, "a share of the device in (0, 1]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')}: got {getattr(self, name)!r}, expected {expected}")
        return self

    def as_params(self) -> dict[str, object]:
        """Flat parameters for MLflow ('lambda' spelled out, None as 'all'/'default')."""
        out = {}
        for k, v in asdict(self).items():
            if k in ("data_root", "cache_dir", "word_vectors"):
                continue
            key = "lambda" if k == "lam" else k
            out[key] = "default" if v is None else v
        return out

    def run_params(self, used: tuple[str, ...], epochs: int | None = None) -> dict[str, object]:
        """What a run shows in MLflow: the common parameters and those its model uses (`used`).

        `epochs` is the number the run trains for (None keeps the field); `lam` is spelled
        `lambda`; a parameter a model ignores is left out, so a filter on it matches only the runs
        it means something to. Calibrated stacking is named only when it is on.
        """
        values = asdict(self)
        if epochs is not None:
            values["epochs"] = epochs
        keys = [*COMMON_PARAMS, *used]
        if self.calibrated_stacking:
            keys.append("calibrated_stacking")
        if self.reports_per_epoch != 1:
            keys.append("reports_per_epoch")
        out: dict[str, object] = {}
        for key in dict.fromkeys(keys):
            value = values[key]
            out["lambda" if key == "lam" else key] = ("all" if key == "num_attributes" else "default") \
                if value is None else value
        return out

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a (search) dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        values = dict(values)
        if "lambda" in values:
            values["lam"] = values.pop("lambda")
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)
