"""DAZLE's search space (DESIGN section 6): lambda, the number of entropy-ranked attributes k,
and the learning rate. Defaults are the paper's configuration (lambda 0.1, all attributes, 1e-4)."""

SPACE = {
    "lam": {"type": "loguniform", "low": 0.01, "high": 1.0},
    "num_attributes": {"type": "int", "low": 1, "high": "all"},
    "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
}

DEFAULTS = {"lam": 0.1, "num_attributes": "all", "lr": 1e-4}
