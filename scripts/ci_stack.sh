#!/usr/bin/env bash
# CI for the cluster stack (docker-compose.yml's services, without Docker): install PostgreSQL's
# server from Debian if missing (CI runs as root) and psycopg into .venv, then run the `stack`
# tests, which bring the stack up with scripts/stack.sh, run a small search against it, check the
# runs in PostgreSQL and MLflow, and stop every process they started.
# Takes about 1.5 min on 2 idle cores (up 20 s, search 60 s, down 10 s) when nothing needs installing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "ci_stack.sh: no .venv (run .ci/run or scripts/test.sh first)" >&2; exit 1; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ci_stack.sh: PostgreSQL is not installed: apt-get install -y --no-install-recommends postgresql" >&2
    exit 1
  fi
  echo "ci_stack.sh: installing PostgreSQL from Debian" >&2
  # Keep the package from starting Debian's default cluster as a service (it would outlive CI):
  # invoke-rc.d asks policy-rc.d, and 101 means "not allowed".
  added_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && added_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  [ -z "$added_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

# SQLAlchemy 2.1 maps postgresql:// to psycopg (version 3).
.venv/bin/python -c "import psycopg" 2>/dev/null || .venv/bin/pip install -q "psycopg[binary]>=3.2"

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
export HARNESS_REQUIRE_STACK=1  # a missing dependency fails here instead of skipping
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider -m stack tests/test_stack.py "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "ci_stack.sh: pytest collected no stack test: failing" >&2; exit 1; fi
exit "$rc"
