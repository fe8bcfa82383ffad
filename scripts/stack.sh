#!/usr/bin/env bash
# The docker-compose stack without Docker, on loopback: PostgreSQL (MLflow's backend store), an
# `mlflow server` on it serving artifacts, a Ray head and one Ray worker node.
#
#   scripts/stack.sh up      start everything, write $STACK_DIR/stack.env, print how to use it
#   scripts/stack.sh down    stop what `up` started, by PID (never `ray stop`: that kills every
#                            Ray process of the machine, other users' included)
#   scripts/stack.sh env     print the exports of a running stack (eval "$(scripts/stack.sh env)")
#
# Environment: STACK_DIR (default runs/stack), PG_BIN (PostgreSQL's bin folder), PYTHON_BIN
# (folder holding python/mlflow/ray; default .venv/bin), RAY_AUTH_MODE (default disabled; with
# `token` set RAY_AUTH_TOKEN too), STACK_CPUS_PER_NODE (default 1).
# Why it exists: no Docker engine runs on the CI machines, yet the stack the compose file
# describes (PostgreSQL-backed MLflow, a multi-node Ray cluster) must be exercised for real.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/runs/stack}"
PYTHON_BIN="${PYTHON_BIN:-$ROOT/.venv/bin}"
[ -x "$PYTHON_BIN/python" ] || PYTHON_BIN="$(dirname "$(command -v python3)")"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
# The Host headers the compose stack's clients send; kept identical here so a test can check them.
export MLFLOW_SERVER_ALLOWED_HOSTS="${MLFLOW_SERVER_ALLOWED_HOSTS:-mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*}"
STATE="$STACK_DIR/stack.env"

die() { echo "stack.sh: $*" >&2; exit 2; }
log() { echo "stack.sh: $*" >&2; }

find_pg_bin() {
  local d="${PG_BIN:-}"
  if [ -z "$d" ]; then
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -z "$d" ] && command -v pg_ctl >/dev/null; then d="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"; fi
  fi
  [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] \
    || die "PostgreSQL not found (${PG_BIN:+PG_BIN=$PG_BIN holds no initdb/pg_ctl; }expected /usr/lib/postgresql/*/bin): apt-get install -y --no-install-recommends postgresql, or set PG_BIN"
  echo "$d"
}

# PostgreSQL refuses to run as root: as root, run its tools as the `postgres` system user.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_ports() {  # N distinct free TCP ports on 127.0.0.1, held together while picked
  "$PYTHON_BIN/python" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Start a long-running command in its own session (so `down` can signal its whole process group),
# logging to $STACK_DIR/<name>.log; prints its PID.
spawn() {
  local name="$1"; shift
  setsid "$@" >"$STACK_DIR/$name.log" 2>&1 < /dev/null &
  echo $!
}

wait_for() {  # wait_for SECONDS DESCRIPTION PID COMMAND...: until COMMAND succeeds, PID alive
  local limit="$1" what="$2" pid="$3"; shift 3
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    running "$pid" || { tail -n 20 "$STACK_DIR"/*.log >&2 || true; die "$what exited before it was ready"; }
    (( SECONDS - t0 < limit )) || { tail -n 20 "$STACK_DIR"/*.log >&2 || true; die "$what not ready after ${limit} s"; }
    sleep 0.5
  done
}

mlflow_ready() {  # ready means an API call answers, not only /health
  "$PYTHON_BIN/python" - "$1" <<'EOF'
import sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/api/2.0/mlflow/experiments/search?max_results=1"
with urllib.request.urlopen(url, timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

ray_nodes_alive() {  # ray_nodes_alive PORT N: the GCS lists at least N alive nodes
  "$PYTHON_BIN/python" - "$1" "$2" <<'EOF'
import sys
from ray._raylet import GcsClient
nodes = GcsClient(address=f"127.0.0.1:{sys.argv[1]}").get_all_node_info(timeout=2)
alive = [n for n in nodes.values() if n.state == 0]  # GcsNodeInfo.ALIVE
sys.exit(0 if len(alive) >= int(sys.argv[2]) else 1)
EOF
}

record() { echo "$1=$2" >> "$STATE"; }

up() {
  [ ! -f "$STATE" ] || die "$STATE exists: a stack is already up there (scripts/stack.sh down first)"
  local pg_bin; pg_bin="$(find_pg_bin)"
  # SQLAlchemy 2.1 maps postgresql:// to psycopg (version 3), not psycopg2.
  "$PYTHON_BIN/python" -c "import psycopg" 2>/dev/null \
    || die "psycopg missing in $PYTHON_BIN: $PYTHON_BIN/pip install 'psycopg[binary]'"
  mkdir -p "$STACK_DIR"
  : > "$STATE"; chmod 600 "$STATE"
  # Whatever fails from here on, stop what was started: `up` either succeeds or leaves nothing running.
  trap 'rc=$?; if [ "$rc" -ne 0 ]; then log "start failed, stopping what was started"; down || true; fi' EXIT

  local pg_port mlflow_port ray_port h_agent h_grpc h_rtenv h_metrics w_agent w_grpc w_rtenv w_metrics
  read -r pg_port mlflow_port ray_port h_agent h_grpc h_rtenv h_metrics \
    w_agent w_grpc w_rtenv w_metrics <<<"$(free_ports 11)"
  local password; password="$("$PYTHON_BIN/python" -c 'import secrets; print(secrets.token_hex(16))')"
  local cpus="${STACK_CPUS_PER_NODE:-1}"
  # Ray's sockets live under its temp dir; keep the path short (AF_UNIX paths are at most 107 bytes).
  local ray_tmp; ray_tmp="$(mktemp -d /tmp/gzsl-ray-XXXXXX)"
  record RAY_TMP "$ray_tmp"

  # PostgreSQL: a fresh cluster, TCP on 127.0.0.1 only, password auth like the compose file. Its
  # folder is under /tmp, owned by the server's user (as root: `postgres`, which may not be able to
  # enter STACK_DIR's parents, e.g. pytest's 0700 tmp folders).
  local pg_dir; pg_dir="$(mktemp -d /tmp/gzsl-pg-XXXXXX)"
  local pgdata="$pg_dir/data" pwfile="$pg_dir/pwfile"
  record PG_DIR "$pg_dir"
  record PG_BIN "$pg_bin"
  printf '%s\n' "$password" > "$pwfile"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$pg_dir"; fi
  log "PostgreSQL: initdb in $pgdata"
  as_pg "$pg_bin/initdb" -D "$pgdata" --username=mlflow --pwfile="$pwfile" --auth=scram-sha-256 \
    --encoding=UTF8 --no-instructions >"$STACK_DIR/initdb.log" 2>&1 || { cat "$STACK_DIR/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pwfile"
  as_pg "$pg_bin/pg_ctl" -D "$pgdata" -l "$pg_dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=''" start >/dev/null \
    || { cat "$pg_dir/postgres.log" >&2; die "PostgreSQL did not start"; }
  record PG_PID "$(head -n 1 "$pgdata/postmaster.pid")"
  PGPASSWORD="$password" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U mlflow mlflow
  local pg_uri="postgresql://mlflow:$password@127.0.0.1:$pg_port/mlflow"
  record PG_PORT "$pg_port"
  record PG_URI "$pg_uri"
  log "PostgreSQL up on 127.0.0.1:$pg_port"

  # MLflow tracking server on PostgreSQL, serving artifacts itself (clients on any node upload over HTTP).
  mkdir -p "$STACK_DIR/artifacts"
  local mlflow_pid
  mlflow_pid="$(MLFLOW_BACKEND_STORE_URI="$pg_uri" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    spawn mlflow "$PYTHON_BIN/mlflow" server --host 127.0.0.1 --port "$mlflow_port" --workers 1 \
      --serve-artifacts --artifacts-destination "$STACK_DIR/artifacts")"
  record MLFLOW_PID "$mlflow_pid"
  record MLFLOW_TRACKING_URI "http://127.0.0.1:$mlflow_port"
  log "MLflow: starting on 127.0.0.1:$mlflow_port (creates its schema in PostgreSQL on first start)"

  # Ray head and one worker node on loopback; every port given so several stacks can share a host.
  local head_pid worker_pid
  head_pid="$(spawn ray-head "$PYTHON_BIN/ray" start --head --port="$ray_port" \
    --num-cpus="$cpus" --num-gpus=0 --include-dashboard=false \
    --dashboard-agent-listen-port="$h_agent" --dashboard-agent-grpc-port="$h_grpc" \
    --runtime-env-agent-port="$h_rtenv" --metrics-export-port="$h_metrics" \
    --temp-dir="$ray_tmp" --disable-usage-stats --block)"
  record RAY_HEAD_PID "$head_pid"
  record RAY_ADDRESS "127.0.0.1:$ray_port"
  wait_for 120 "Ray head" "$head_pid" ray_nodes_alive "$ray_port" 1
  worker_pid="$(spawn ray-worker "$PYTHON_BIN/ray" start --address="127.0.0.1:$ray_port" \
    --num-cpus="$cpus" --num-gpus=0 \
    --dashboard-agent-listen-port="$w_agent" --dashboard-agent-grpc-port="$w_grpc" \
    --runtime-env-agent-port="$w_rtenv" --metrics-export-port="$w_metrics" \
    --disable-usage-stats --block)"
  record RAY_WORKER_PID "$worker_pid"
  wait_for 120 "Ray worker" "$worker_pid" ray_nodes_alive "$ray_port" 2
  log "Ray: head and worker up at 127.0.0.1:$ray_port"
  wait_for 180 "MLflow server" "$mlflow_pid" mlflow_ready "$mlflow_port"
  log "MLflow up at http://127.0.0.1:$mlflow_port"
  trap - EXIT
  env_exports
  cat >&2 <<EOF
stack.sh: up. Use it with:
  eval "\$(scripts/stack.sh env)"
  python -m harness.search --dataset synthetic --address \$RAY_ADDRESS --tracking-uri \$MLFLOW_TRACKING_URI
stack.sh: stop it with: scripts/stack.sh down
EOF
}

env_exports() {
  [ -f "$STATE" ] || die "no stack state at $STATE (scripts/stack.sh up first)"
  # shellcheck disable=SC1090
  ( . "$STATE"
    echo "export RAY_ADDRESS=${RAY_ADDRESS:-} MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-} RAY_AUTH_MODE=$RAY_AUTH_MODE" )
}

tree() {  # the PIDs of a process tree, the root first, plus the rest of its process group
  local pid="$1" child
  echo "$pid"
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do tree "$child"; done
  ps -eo pid=,pgid= | awk -v g="$pid" '$2 == g && $1 != g { print $1 }'
}

running() {  # alive and not a zombie (a zombie answers kill -0 until its parent reaps it)
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "${state:0:1}" != Z ]
}

stop_tree() {  # SIGTERM a process tree's root, then the rest, SIGKILL whatever outlives the grace period
  local name="$1" pid="$2" grace="${3:-20}" pids
  running "$pid" || return 0
  # Collect the tree first: once the root is gone its children are re-parented and lost to us.
  pids="$(tree "$pid" | sort -un | tr '\n' ' ')"
  log "stopping $name (PIDs $pids)"
  # The root first: `ray start --block` and `mlflow server` stop their own children in order.
  kill -TERM "$pid" 2>/dev/null || true
  local t0=$SECONDS p alive termed=""
  while :; do
    alive=""
    for p in $pids; do running "$p" && alive="$alive $p"; done
    [ -n "$alive" ] || { log "$name stopped in $(( SECONDS - t0 )) s"; return 0; }
    if (( SECONDS - t0 >= grace )); then
      log "$name: SIGKILL to$alive after ${grace} s"
      kill -KILL $alive 2>/dev/null || true
      return 0
    fi
    if [ -z "$termed" ] && { ! running "$pid" || (( SECONDS - t0 >= grace / 2 )); }; then
      kill -TERM $alive 2>/dev/null || true  # children the root left behind
      termed=1
    fi
    sleep 0.3
  done
}

down() {
  [ -f "$STATE" ] || { log "nothing to stop: no $STATE"; return 0; }
  local RAY_WORKER_PID="" RAY_HEAD_PID="" MLFLOW_PID="" PG_PID="" PG_DIR="" PG_BIN="" RAY_TMP=""
  # shellcheck disable=SC1090
  . "$STATE"
  # The three stop independently (each takes a few seconds to shut down gracefully): in parallel.
  [ -z "$RAY_WORKER_PID" ] || stop_tree ray-worker "$RAY_WORKER_PID" &
  [ -z "$RAY_HEAD_PID" ] || stop_tree ray-head "$RAY_HEAD_PID" &
  [ -z "$MLFLOW_PID" ] || stop_tree mlflow "$MLFLOW_PID" &
  wait
  if [ -n "$PG_PID" ] && running "$PG_PID"; then
    log "stopping PostgreSQL (PID $PG_PID)"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 || stop_tree postgres "$PG_PID" 5
  fi
  case "$PG_DIR" in /tmp/gzsl-pg-*) cp "$PG_DIR/postgres.log" "$STACK_DIR/" 2>/dev/null || true; rm -rf "$PG_DIR" ;; esac
  case "$RAY_TMP" in /tmp/gzsl-ray-*) rm -rf "$RAY_TMP" ;; esac
  mv "$STATE" "$STATE.down"
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_exports ;;
  *) echo "usage: scripts/stack.sh up|down|env" >&2; exit 2 ;;
esac
