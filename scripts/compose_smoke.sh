#!/usr/bin/env bash
# The compose stack built and run for real, CPU-only, then removed: bash scripts/compose_smoke.sh
#
#  1. a Docker engine: the one DOCKER_HOST (or the default socket) reaches, else a dockerd of its
#     own (own data and exec roots under .compose-smoke/, its PID recorded; needs root);
#  2. a base: when Docker Hub cannot be reached, a local Debian bookworm base (debootstrap
#     --variant=minbase from the host's apt mirror, then `docker import`) and
#     docker/compose.offline.yml on top (PostgreSQL from Debian's package);
#  3. the images, with the legacy builder (DOCKER_BUILDKIT=0); torch from a CPU wheel found on
#     this machine (pip's find-links folders, SMOKE_TORCH_WHEEL) put into docker/wheelhouse/,
#     else from the index (the 5 GB CUDA build);
#  4. a compose file derived for the run (docker/compose_flatten.py): no GPU reservation, head
#     with 0 CPUs, workers with 1 CPU, free host ports; `up --scale ray-worker=2`, health waited;
#  5. `python -m harness.search --dataset synthetic --num-samples 6 --address auto` in ray-head
#     against the mlflow service; from the host, over MLflow's REST API: the parent run, the
#     trials and the final runs, with metrics and artifacts; the trials' Ray nodes (both workers);
#     the published ports listening on 127.0.0.1 only;
#  6. `down`, `up` again (volumes kept): the runs are still there; `--resume` of the search folder;
#  7. clean-up: `down -v`, the images it built removed, its dockerd stopped by PID, and what that
#     daemon changed on the host undone (docker0, its iptables chains and rules, the FORWARD
#     policy, net.ipv4.ip_forward). Every step prints its time and the disk used.
#
# Takes 10-20 minutes on a 2-core machine (docs/cluster.md); not part of CI.
# Environment: SMOKE_DIR (default .compose-smoke), SMOKE_OFFLINE=1 (force the local base),
# SMOKE_BASE_IMAGE (a Debian bookworm base already there, used and kept),
# SMOKE_TORCH_WHEEL (a torch CPU wheel), SMOKE_KEEP=1 (leave the stack up and the images).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="${SMOKE_DIR:-$ROOT/.compose-smoke}"
PROJECT="gzslsmoke$$"
TAG="smoke-$$"
SEARCH_DIR=/runs/smoke-search
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

T0=$(date +%s)
STEP_T=$T0
disk_used() { df -BM --output=used / | tail -1 | tr -d ' '; }
DISK0=$(disk_used)
log() { printf '[smoke %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
step_done() {
  local now; now=$(date +%s)
  log "done: $1 in $(( now - STEP_T )) s; disk used on / $(disk_used) (start $DISK0)${2:+; $2}"
  "$DOCKER" info >/dev/null 2>&1 && log "      docker disk: $("$DOCKER" system df --format '{{.Type}} {{.Size}}' | paste -sd, | sed 's/,/, /g')"
  STEP_T=$now
}
fail() { log "FAILED: $*"; exit 1; }

DOCKER=docker
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker  # Debian's client, in case another one comes first on PATH
if command -v docker-compose >/dev/null 2>&1; then COMPOSE_BIN=(docker-compose); else COMPOSE_BIN=("$DOCKER" compose); fi
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

STARTED_DAEMON=0
D="$WORK/dockerd"
CREATED_FILES=()
BUILT_IMAGES=()
STACK_UP=0

# ------------------------------------------------------------------ clean-up (always runs)

restore_host() {
  # Only what our dockerd added: rules and chains absent before it started.
  local t line chain
  for t in filter nat; do
    iptables -t "$t" -S > "$D/iptables.$t.after" 2>/dev/null || continue
    grep -E '^-A ' "$D/iptables.$t.after" | grep -E 'DOCKER|docker0|br-[0-9a-f]{12}' \
      | grep -vxF -f "$D/iptables.$t.before" | while read -r line; do
        chain="$(awk '{print $2}' <<<"$line")"
        if grep -qxF -- "-N $chain" "$D/iptables.$t.before" || ! grep -qxF -- "-N $chain" "$D/iptables.$t.after"; then
          # a rule in a chain that outlives us (FORWARD, POSTROUTING, ...): delete it
          eval "iptables -t $t -D ${line#-A }" || log "could not delete: iptables -t $t $line"
        fi
      done
    for chain in $(grep -E '^-N ' "$D/iptables.$t.after" | awk '{print $2}'); do
      grep -qxF -- "-N $chain" "$D/iptables.$t.before" || iptables -t "$t" -F "$chain"
    done
    for chain in $(grep -E '^-N ' "$D/iptables.$t.after" | awk '{print $2}'); do
      grep -qxF -- "-N $chain" "$D/iptables.$t.before" || iptables -t "$t" -X "$chain" || log "could not delete chain $t/$chain"
    done
  done
  iptables -P FORWARD "$(cat "$D/forward.policy.before")"
  if [ "$(cat "$D/docker0.before")" = absent ] && ip link show docker0 >/dev/null 2>&1; then ip link delete docker0; fi
  sysctl -q -w "net.ipv4.ip_forward=$(cat "$D/ip_forward.before")"
  log "host restored: ip_forward=$(sysctl -n net.ipv4.ip_forward)," \
      "FORWARD policy $(iptables -S FORWARD | head -1 | awk '{print $3}')," \
      "docker0 $(ip link show docker0 >/dev/null 2>&1 && echo present || echo absent)," \
      "DOCKER chains left: $(iptables-save 2>/dev/null | grep -c '^:DOCKER' || true)"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  STEP_T=$(date +%s)
  log "clean-up (exit status so far: $rc)"
  if [ "${SMOKE_KEEP:-0}" = 1 ]; then
    log "SMOKE_KEEP=1: leaving the stack ($PROJECT), the images and the daemon; DOCKER_HOST=${DOCKER_HOST:-}"
    exit "$rc"
  fi
  if [ "$STACK_UP" = 1 ]; then
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || log "compose down failed"
  fi
  for image in "${BUILT_IMAGES[@]}"; do "$DOCKER" rmi -f "$image" >/dev/null 2>&1 || true; done
  [ "${#BUILT_IMAGES[@]}" -gt 0 ] && log "removed images: ${BUILT_IMAGES[*]}"
  if [ "$STARTED_DAEMON" = 0 ] && [ -f "$WORK/dangling.before" ]; then
    # the untagged images of the build's intermediate stage (torch), created during this run
    local gone; gone="$("$DOCKER" images -q --filter dangling=true | sort | comm -13 "$WORK/dangling.before" - | sort -u)"
    [ -n "$gone" ] && "$DOCKER" rmi $gone >/dev/null 2>&1 && log "removed $(wc -w <<<"$gone") untagged build-stage image(s)"
  fi
  for f in "${CREATED_FILES[@]}"; do rm -f "$f"; done
  rm -rf "$WORK/rootfs" "$WORK/compose.smoke.yml" "$WORK/smoke.env" "$WORK/data" "$WORK/cache"
  if [ "$STARTED_DAEMON" = 1 ]; then
    local pid; pid="$(cat "$D/dockerd.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && { log "dockerd $pid ignored SIGTERM; SIGKILL"; kill -KILL "$pid"; }
      log "stopped dockerd (PID $pid)"
    fi
    restore_host
    log "data root before removal: $(du -sh "$D/data" 2>/dev/null | cut -f1)"
    # overlay mounts are gone once dockerd exits cleanly; anything still mounted stays (and says so)
    if grep -q " $D/" /proc/mounts; then log "still mounted under $D: not removing it"; else rm -rf "$D"; fi
  fi
  rmdir "$WORK" 2>/dev/null || true
  log "clean-up done in $(( $(date +%s) - STEP_T )) s; disk used on / $(disk_used) (start $DISK0)"
  log "total $(( $(date +%s) - T0 )) s, exit status $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ 1. the engine

if "$DOCKER" info >/dev/null 2>&1; then
  log "using the Docker engine already reachable (${DOCKER_HOST:-default socket})"
else
  [ "$(id -u)" = 0 ] || fail "no Docker engine reachable, and starting one needs root"
  command -v dockerd >/dev/null || fail "no dockerd (apt-get install -y --no-install-recommends docker.io docker-compose debootstrap)"
  mkdir -p "$D"
  iptables -t filter -S > "$D/iptables.filter.before"
  iptables -t nat -S > "$D/iptables.nat.before"
  iptables -S FORWARD | awk 'NR==1 {print $3}' > "$D/forward.policy.before"
  sysctl -n net.ipv4.ip_forward > "$D/ip_forward.before"
  if ip link show docker0 >/dev/null 2>&1; then echo present; else echo absent; fi > "$D/docker0.before"
  STARTED_DAEMON=1
  dockerd --host "unix://$D/docker.sock" --data-root "$D/data" --exec-root "$D/exec" \
    --pidfile "$D/dockerd.pid" > "$D/dockerd.log" 2>&1 &
  export DOCKER_HOST="unix://$D/docker.sock"
  for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
  "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$D/dockerd.log"; fail "dockerd did not come up"; }
  log "started dockerd, PID $(cat "$D/dockerd.pid"), data root $D/data, DOCKER_HOST=$DOCKER_HOST"
fi
log "$("$DOCKER" version --format 'engine {{.Server.Version}}'), $("${COMPOSE_BIN[@]}" version --short 2>/dev/null | head -1 | sed 's/^/compose /')"
step_done "engine"

# ------------------------------------------------------------------ 2. the base

COMPOSE_FILES=(-f docker-compose.yml)
OFFLINE="${SMOKE_OFFLINE:-}"
had_public=()  # public images already there are the user's: kept at clean-up
for image in python:3.11-slim-bookworm postgres:17-bookworm; do
  "$DOCKER" image inspect "$image" >/dev/null 2>&1 && had_public+=("$image")
done
if [ -z "$OFFLINE" ]; then
  if timeout 60 "$DOCKER" pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then OFFLINE=0; else OFFLINE=1; fi
fi
if [ "$OFFLINE" = 1 ] && [ -n "${SMOKE_BASE_IMAGE:-}" ]; then
  BASE="$SMOKE_BASE_IMAGE"
  COMPOSE_FILES+=(-f docker/compose.offline.yml)
  step_done "base image $BASE (given; kept)"
elif [ "$OFFLINE" = 1 ]; then
  BASE="gzsl-smoke/bookworm:$TAG"
  MIRROR="$( (cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true) | grep -E '^(URIs:|deb )' \
            | grep -v security | head -1 | awk '{print ($1 == "deb" ? ($2 ~ /^\[/ ? $3 : $2) : $2)}' || true)"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
  log "no registry reachable: building the base $BASE (debootstrap --variant=minbase bookworm, $MIRROR)"
  command -v debootstrap >/dev/null || fail "debootstrap missing (apt-get install -y --no-install-recommends debootstrap)"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  log "rootfs: $(du -sh "$WORK/rootfs" | cut -f1)"
  tar -C "$WORK/rootfs" -c . | "$DOCKER" import - "$BASE" >/dev/null
  BUILT_IMAGES+=("$BASE")
  rm -rf "$WORK/rootfs" "$WORK/debootstrap.log"
  COMPOSE_FILES+=(-f docker/compose.offline.yml)
  step_done "base image (offline)" "$("$DOCKER" image ls --format '{{.Size}}' "$BASE")"
else
  BASE=""
  [[ " ${had_public[*]} " == *" python:3.11-slim-bookworm "* ]] || BUILT_IMAGES+=(python:3.11-slim-bookworm)
  step_done "base image pulled (registry reachable)"
fi

# ------------------------------------------------------------------ 3. build inputs and images

# torch: a CPU wheel on this machine keeps the image small (the PyPI wheel is the CUDA build).
TORCH_REQ="torch==2.14.1 torchvision==0.29.1"
wheel="${SMOKE_TORCH_WHEEL:-}"
if [ -z "$wheel" ]; then
  for dir in ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true) /opt/wheels; do
    [ -d "$dir" ] || continue
    wheel="$(ls "$dir"/torch-*+cpu-cp311-*manylinux*x86_64.whl 2>/dev/null | sort -V | tail -1 || true)"
    [ -n "$wheel" ] && break
  done
fi
wheel_version() { ls docker/wheelhouse/"$1"-*.whl 2>/dev/null | sort -V | tail -1 | xargs -r basename | cut -d- -f2; }
if ls docker/wheelhouse/torch-*.whl >/dev/null 2>&1; then
  tv="$(wheel_version torchvision)"
  TORCH_REQ="${TORCH_REQUIREMENTS:-torch==$(wheel_version torch)${tv:+ torchvision==$tv}}"
  log "docker/wheelhouse/ already holds torch: TORCH_REQUIREMENTS=$TORCH_REQ"
elif [ -n "$wheel" ]; then
  version="$(basename "$wheel" | cut -d- -f2)"
  before=$(ls docker/wheelhouse)
  "$PY" -m pip download -q --only-binary=:all: -d docker/wheelhouse "$wheel" "torch==$version" torchvision 2>&1 \
    | grep -v "is ignored" || true
  for f in docker/wheelhouse/*.whl; do grep -qxF "$(basename "$f")" <<<"$before" || CREATED_FILES+=("$ROOT/$f"); done
  TORCH_REQ="torch==$version torchvision==$(wheel_version torchvision)"
  log "torch from a local wheelhouse: $TORCH_REQ ($(du -ch "${CREATED_FILES[@]}" | tail -1 | cut -f1) in docker/wheelhouse/)"
else
  log "no torch CPU wheel found: torch from the index ($TORCH_REQ, the CUDA build: about 5 GB)"
fi
# The host's extra CA certificates (a TLS-intercepting proxy), unless docker/certs/ has some.
if ! ls docker/certs/*.crt >/dev/null 2>&1 && ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  for f in /usr/local/share/ca-certificates/*.crt; do cp "$f" docker/certs/; CREATED_FILES+=("$ROOT/docker/certs/$(basename "$f")"); done
  log "extra CA certificates: $(ls /usr/local/share/ca-certificates/*.crt | xargs -n1 basename | tr '\n' ' ')"
fi

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MLFLOW_PORT=$(free_port); RAY_GCS_PORT=$(free_port); RAY_DASHBOARD_PORT=$(free_port); RAY_CLIENT_PORT=$(free_port)
mkdir -p "$WORK/data" "$WORK/cache"
chmod 755 "$WORK/data" "$WORK/cache"
umask 077
cat > "$WORK/smoke.env" <<EOF
POSTGRES_PASSWORD=$("$PY" -c 'import secrets; print(secrets.token_hex(24))')
RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
RAY_AUTH_MODE=token
HARNESS_IMAGE_TAG=$TAG
OFFLINE_BASE_IMAGE=$BASE
TORCH_REQUIREMENTS=$TORCH_REQ
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
HARNESS_DATA_DIR=$WORK/data
HARNESS_CACHE_DIR=$WORK/cache
RAY_HEAD_CPUS=0
RAY_WORKER_CPUS=1
RAY_SHM_SIZE=1gb
MLFLOW_WORKERS=1
MLFLOW_PORT=$MLFLOW_PORT
RAY_GCS_PORT=$RAY_GCS_PORT
RAY_DASHBOARD_PORT=$RAY_DASHBOARD_PORT
RAY_CLIENT_PORT=$RAY_CLIENT_PORT
EOF
umask 022
# The user-facing file keeps its GPU reservation; Compose v1 cannot delete a key in an override,
# so the smoke run's file is derived: merged, interpolated, without ray-worker's `deploy`.
"$PY" docker/compose_flatten.py "${COMPOSE_FILES[@]}" --env-file "$WORK/smoke.env" \
  --drop services.ray-worker.deploy -o "$WORK/compose.smoke.yml"
COMPOSE=("${COMPOSE_BIN[@]}" -p "$PROJECT" -f "$WORK/compose.smoke.yml")
log "compose file: $WORK/compose.smoke.yml (from ${COMPOSE_FILES[*]}; ports 127.0.0.1:$MLFLOW_PORT mlflow," \
    "$RAY_GCS_PORT GCS, $RAY_DASHBOARD_PORT dashboard, $RAY_CLIENT_PORT client)"
step_done "build inputs"

"$DOCKER" images -q --filter dangling=true | sort > "$WORK/dangling.before"
CREATED_FILES+=("$WORK/dangling.before")
BUILD_SERVICES=(mlflow)
[ "$OFFLINE" = 1 ] && BUILD_SERVICES=(postgres mlflow)
for service in "${BUILD_SERVICES[@]}"; do
  image="$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['services'][sys.argv[2]]['image'])" \
           "$WORK/compose.smoke.yml" "$service")"
  BUILT_IMAGES+=("$image")
  "${COMPOSE[@]}" build "$service" > "$WORK/build-$service.log" 2>&1 || { tail -30 "$WORK/build-$service.log"; fail "build $service"; }
  CREATED_FILES+=("$WORK/build-$service.log")
  step_done "image $image (service $service)" "$("$DOCKER" image ls --format '{{.Size}}' "$image")"
done
[ "$OFFLINE" = 1 ] || [[ " ${had_public[*]} " == *" postgres:17-bookworm "* ]] || BUILT_IMAGES+=(postgres:17-bookworm)

# ------------------------------------------------------------------ 4. up, health

health() { "$DOCKER" inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null; }
ids() { "${COMPOSE[@]}" ps -q "$1"; }
wait_healthy() {  # $1: when `up` began
  local start="$1"
  for _ in $(seq 150); do
    local ok=1 s id
    for s in postgres mlflow ray-head; do
      id="$(ids "$s")"; [ -n "$id" ] && [ "$(health "$id")" = healthy ] || ok=0
    done
    for id in $(ids ray-worker); do [ "$(health "$id")" = running ] || ok=0; done
    if [ "$ok" = 1 ] && "${COMPOSE[@]}" exec -T ray-head python -c "
import ray, sys
ray.init(address='auto', logging_level='ERROR')
alive = [n for n in ray.nodes() if n['Alive']]
sys.exit(0 if len(alive) == 3 else 1)" >/dev/null 2>&1; then
      log "healthy $(( $(date +%s) - start )) s after \`up\`: postgres, mlflow, ray-head healthy; 2 workers joined (3 Ray nodes)"
      return 0
    fi
    sleep 4
  done
  "${COMPOSE[@]}" ps; "${COMPOSE[@]}" logs --tail 30
  fail "the stack did not become healthy"
}

STACK_UP=1
UP_T=$(date +%s)
"${COMPOSE[@]}" up -d --scale ray-worker=2 2>&1 | sed 's/^/  /'
wait_healthy "$UP_T"
"${COMPOSE[@]}" ps | sed 's/^/  /'
step_done "up and healthy"

# ------------------------------------------------------------------ 5. the search, then MLflow over HTTP

SEARCH=(python -m harness.search --dataset synthetic --num-samples 6 --address auto --final-seeds 1
        --storage "$SEARCH_DIR" --json)
log "in ray-head: ${SEARCH[*]}"
"${COMPOSE[@]}" exec -T ray-head "${SEARCH[@]}" > "$WORK/search.out" 2> "$WORK/search.err" \
  || { tail -40 "$WORK/search.err"; fail "the search failed"; }
CREATED_FILES+=("$WORK/search.out" "$WORK/search.err")
grep -v '^{' "$WORK/search.out" | sed 's/^/  /'
tail -1 "$WORK/search.out" > "$WORK/summary.json"; CREATED_FILES+=("$WORK/summary.json")
step_done "search"

WORKER_HOSTS="$(for id in $(ids ray-worker); do "$DOCKER" inspect --format '{{.Config.Hostname}}' "$id"; done | tr '\n' ' ')"
HEAD_HOST="$("$DOCKER" inspect --format '{{.Config.Hostname}}' "$(ids ray-head)")"
check_mlflow() {  # $1: label, $2: 1 to check where the trials ran; fails unless the runs are complete
  "$PY" - "$MLFLOW_PORT" "$1" "$WORKER_HOSTS" "$HEAD_HOST" "$2" <<'EOF'
import json, sys, urllib.request
port, label, workers, head, placement = sys.argv[1], sys.argv[2], set(sys.argv[3].split()), sys.argv[4], sys.argv[5] == "1"
base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
def call(path, body=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
exps = [e for e in call("/experiments/search", {"max_results": 100})["experiments"] if e["name"] != "Default"]
ids = [e["experiment_id"] for e in exps]
runs, token = [], None
while True:
    body = {"experiment_ids": ids, "max_results": 1000, **({"page_token": token} if token else {})}
    got = call("/runs/search", body)
    runs += got.get("runs", [])
    token = got.get("next_page_token")
    if not token:
        break
def tags(r): return {t["key"]: t["value"] for t in r["data"].get("tags", [])}
by_kind = {}
for r in runs:
    by_kind.setdefault(tags(r).get("kind", "?"), []).append(r)
parents, trials, finals = by_kind.get("search", []), by_kind.get("trial", []), by_kind.get("final", [])
problems = []
if len(parents) != 1: problems.append(f"{len(parents)} parent runs")
if len(trials) < 6: problems.append(f"{len(trials)} trial runs (< 6)")
if len(finals) < 1: problems.append("no final run")
parent_id = parents[0]["info"]["run_id"] if parents else None
artifacts = {}
for r in parents + trials + finals:
    rid, t = r["info"]["run_id"], tags(r)
    if r is not parents[0] and t.get("mlflow.parentRunId") != parent_id:
        problems.append(f"run {rid[:8]} ({t.get('kind')}) is not a child of the parent run")
    if not r["data"].get("metrics"):
        problems.append(f"run {rid[:8]} ({t.get('kind')}) has no metrics")
    if r["info"]["status"] != "FINISHED" and t.get("kind") != "trial":
        problems.append(f"run {rid[:8]} ({t.get('kind')}) is {r['info']['status']}")
    files = call(f"/artifacts/list?run_id={rid}").get("files", [])
    artifacts[rid] = len(files)
for r in finals + parents:
    if not artifacts[r["info"]["run_id"]]:
        problems.append(f"run {r['info']['run_id'][:8]} ({tags(r).get('kind')}) has no artifacts")
status = {}
for r in trials: status[r["info"]["status"]] = status.get(r["info"]["status"], 0) + 1
nodes = {}
for r in trials:
    t = tags(r)
    nodes.setdefault((t.get("node", "?"), t.get("ray_node", "?")), 0)
    nodes[(t.get("node", "?"), t.get("ray_node", "?"))] += 1
print(f"  [{label}] over HTTP (POST {base}/runs/search): {len(runs)} runs in experiment(s) "
      f"{[e['name'] for e in exps]}: {len(parents)} parent, {len(trials)} trials {status}, {len(finals)} final")
print(f"  [{label}] metrics: parent {len(parents[0]['data'].get('metrics', [])) if parents else 0}, "
      f"trial min {min((len(r['data'].get('metrics', [])) for r in trials), default=0)}, "
      f"final {[len(r['data'].get('metrics', [])) for r in finals]}; artifacts (top-level entries): "
      f"parent {artifacts.get(parent_id)}, finals {[artifacts[r['info']['run_id']] for r in finals]}, "
      f"trials with artifacts {sum(1 for r in trials if artifacts[r['info']['run_id']])}/{len(trials)}")
for (host, ray_node), n in sorted(nodes.items()):
    role = "worker" if host in workers else ("HEAD" if host == head else "?")
    print(f"  [{label}] trials on container {host} ({role}), Ray node {ray_node}: {n}")
final_nodes = sorted({tags(r).get("ray_node", "?") for r in finals})
print(f"  [{label}] final runs on Ray node(s) {final_nodes}")
if placement and {h for h, _ in nodes} - workers: problems.append("trials ran outside the worker containers")
if placement and len({h for h, _ in nodes} & workers) < 2: problems.append("the trials did not land on both workers")
if problems:
    sys.exit("  " + "\n  ".join(problems))
EOF
}
check_mlflow "after the search" 1 || fail "MLflow check"
step_done "MLflow over HTTP"

# Published ports: every listener of the stack's ports is on 127.0.0.1.
for port in "$MLFLOW_PORT" "$RAY_GCS_PORT" "$RAY_DASHBOARD_PORT" "$RAY_CLIENT_PORT"; do
  listeners="$(ss -Hltn "sport = :$port" | awk '{print $4}' | sort -u | tr '\n' ' ')"
  [ -n "$listeners" ] || fail "nothing listens on port $port"
  for l in $listeners; do [[ "$l" == 127.0.0.1:* ]] || fail "port $port listens on $l, not 127.0.0.1"; done
  log "port $port: $listeners"
done
"$DOCKER" ps --filter "label=com.docker.compose.project=$PROJECT" --format '  {{.Names}}: {{.Ports}}'
step_done "ports"

# ------------------------------------------------------------------ 6. down, up again: state persists

"${COMPOSE[@]}" down 2>&1 | sed 's/^/  /'
log "down (volumes kept): $("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | tr '\n' ' ')"
UP_T=$(date +%s)
"${COMPOSE[@]}" up -d --scale ray-worker=2 2>&1 | sed 's/^/  /'
wait_healthy "$UP_T"
# The new containers have new host names (the runs keep the old ones): counts only this time.
check_mlflow "after down/up" 0 || fail "the runs did not survive down/up"
step_done "down and up again"

log "in ray-head: python -m harness.search --dataset synthetic --address auto --storage $SEARCH_DIR --resume --json"
"${COMPOSE[@]}" exec -T ray-head python -m harness.search --dataset synthetic --address auto \
  --storage "$SEARCH_DIR" --resume --json > "$WORK/resume.out" 2> "$WORK/resume.err" \
  || { tail -40 "$WORK/resume.err"; fail "--resume failed"; }
CREATED_FILES+=("$WORK/resume.out" "$WORK/resume.err")
grep -v '^{' "$WORK/resume.out" | sed 's/^/  /'
grep -iE "resum|folder" "$WORK/resume.err" | head -5 | sed 's/^/  stderr: /' || true
step_done "resume"

log "SMOKE TEST PASSED"
