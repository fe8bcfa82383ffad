"""ESZSL's search space: gamma (feature-side ridge) and lambda (semantic-side ridge), both on the
log grid the paper validates over, 10^b for b = -3..3.

Defaults gamma = lambda = 1: the centre of that grid, since neither the ESZSL paper nor the GBU
benchmark publishes one chosen pair, and the best pair depends on the feature scale (X X^T grows
with the number and magnitude of the features; S S^T with the number of seen classes). They are
the first trial, not a recommendation: on `synthetic` the search-stage validation prefers a
smaller lambda (0.1)."""

SPACE = {
    "eszsl_gamma": {"type": "loguniform", "low": 1e-3, "high": 1e3},
    "eszsl_lambda": {"type": "loguniform", "low": 1e-3, "high": 1e3},
}

DEFAULTS = {"eszsl_gamma": 1.0, "eszsl_lambda": 1.0}
