"""Hyperparameter search: Ray Tune trials on validation classes, Optuna TPE, ASHA, one final test.

`python -m harness.search` (or the `harness-search` script) is the CLI, in `__main__`. The package
is one job split by concern: `settings` (the options), `space` (plain-data spaces -> Optuna),
`trial` (the trainable each Ray worker runs), `tune` (Tuner, scheduler, callbacks), `driver` (one
model's search: Tune run or restore, best trial, finals, summary), `final` (retrain + test),
`state` (the search folder that `--resume` reads), `report` (tables), `legacy` (the pre-package
module names, so older search folders resume; docs/search.md). This file imports nothing, so
importing any part of the package costs only that part.
"""
