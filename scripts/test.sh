#!/usr/bin/env bash
# The test command of README: set up .venv if needed, then run the whole suite.
# pytest's exit code 5 (no test collected) is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' || exit 1
fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no test: failing" >&2; exit 1; fi
exit "$rc"
