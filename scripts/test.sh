#!/usr/bin/env bash
# README's test command: set up .venv if needed, run ruff, the whole suite, then the cluster-stack
# tests (PostgreSQL + MLflow + two Ray nodes outside Docker, scripts/ci_stack.sh).
# Extra arguments go to the main pytest run and skip the stack part (e.g. `-m "not slow"`).
# pytest's exit code 5 (no test collected) is a failure here, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' || exit 1
fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 -m "not stack" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no test: failing" >&2; exit 1; fi
[ "$rc" -eq 0 ] || exit "$rc"
[ "$#" -eq 0 ] || exit 0
if [ "$(id -u)" -ne 0 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${CI:-}" ]; then
  echo "test.sh: stack tests skipped: PostgreSQL is not installed and installing it needs root" >&2
  exit 0
fi
exec bash scripts/ci_stack.sh
