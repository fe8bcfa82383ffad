"""DeViSE's search space: Adam's learning rate and the hinge margin.

Defaults: margin 0.1 as Frome et al.; lr 1e-2, the best of 10^-4..10^-1 on `synthetic`'s
validation classes at margin 0.1 and large enough for Adam to move the scores to the margin's
scale within the few hundred steps of a small dataset. Because the map starts at zero and the
loss has no other regulariser, scaling lr and margin together gives the same predictions: the
search effectively tunes margin / lr, and both stay in the space as the issue specifies."""

SPACE = {
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
    "margin": {"type": "loguniform", "low": 1e-2, "high": 1.0},
}

DEFAULTS = {"lr": 1e-2, "margin": 0.1}
