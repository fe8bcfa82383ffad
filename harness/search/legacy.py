"""The module names of the search before it was a package, so folders written then still resume.

Up to 3a82480 the search lived in flat modules (harness/search_tune.py, search_trial.py, ...).
Ray Tune pickles the scheduler (PaperFirstASHA), the searcher and the callbacks (TrialRunsCallback,
ProgressCallback) of an experiment into its folder by module path, so a folder written then names
`harness.search_tune`; unpickling it needs that name importable. `install_aliases()` registers
each old name in `sys.modules` as the module that now holds the same code, without files at the
old paths. The driver calls it before `Tuner.restore`; once restored, Ray saves the experiment
again under the new names.
"""

from __future__ import annotations

import importlib
import sys

OLD_NAMES = {
    "harness.search_space": "harness.search.space",
    "harness.search_state": "harness.search.state",
    "harness.search_report": "harness.search.report",
    "harness.search_trial": "harness.search.trial",
    "harness.search_tune": "harness.search.tune",
    "harness.search_final": "harness.search.final",
}


def install_aliases() -> None:
    """Make every pre-package module name import the module that holds its code now (idempotent)."""
    for old, new in OLD_NAMES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
