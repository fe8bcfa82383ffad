#!/usr/bin/env bash
# The main job on the embedded dataset: set up .venv if needed, then a search on `synthetic`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'
fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/python -m harness.search --dataset synthetic "$@"
