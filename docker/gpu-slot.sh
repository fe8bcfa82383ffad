#!/usr/bin/env bash
# gpu-slot COMMAND...: run COMMAND (a Ray worker) on GPUs of its own.
#
# Why: Docker turns a device reservation of `count: N` into GPUs 0..N-1 for every container, so
# `docker compose up --scale ray-worker=4` with `count: 1` would stack all four workers on GPU 0.
# Instead every replica is given all GPUs of the host and takes the first free slot of
# GPUS_PER_WORKER GPUs (slot i = GPUs i*k .. i*k+k-1) by holding a lock in a folder that the
# replicas of one host share (a named volume). The lock belongs to COMMAND's process and dies with
# it, so a restarted replica takes a free slot again. CUDA_VISIBLE_DEVICES tells Ray which GPUs
# the node owns; Ray counts them itself.
#
# Environment: GPUS_PER_WORKER (default 1; `all` = no slots, every GPU of the host),
# GPU_SLOT_DIR (default /run/gpu-slots), GPU_SLOT_TOTAL (GPUs on the host; default: counted with
# nvidia-smi, else from /dev/nvidiaN).
set -euo pipefail

[ "$#" -gt 0 ] || { echo "usage: gpu-slot COMMAND [ARG...]" >&2; exit 2; }
per="${GPUS_PER_WORKER:-1}"
slot_dir="${GPU_SLOT_DIR:-/run/gpu-slots}"

count_gpus() {
  if [ -n "${GPU_SLOT_TOTAL:-}" ]; then echo "$GPU_SLOT_TOTAL"
  elif command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else find /dev -maxdepth 1 -regex '/dev/nvidia[0-9]+' 2>/dev/null | wc -l
  fi
}

if [ "$per" = "all" ]; then exec "$@"; fi
case "$per" in ''|*[!0-9]*|0) echo "gpu-slot: GPUS_PER_WORKER=$per: expected a positive integer or 'all'" >&2; exit 2 ;; esac
total="$(count_gpus)"
if [ "$total" -eq 0 ]; then
  echo "gpu-slot: no GPU visible; starting a CPU-only worker" >&2
  export CUDA_VISIBLE_DEVICES=""
  exec "$@"
fi
slots=$(( total / per ))
[ "$slots" -ge 1 ] || { echo "gpu-slot: GPUS_PER_WORKER=$per but this host has $total GPU(s)" >&2; exit 2; }
mkdir -p "$slot_dir"
for (( i = 0; i < slots; i++ )); do
  exec {fd}>"$slot_dir/slot-$i.lock"
  if flock -n "$fd"; then
    CUDA_VISIBLE_DEVICES="$(seq -s, $(( i * per )) $(( i * per + per - 1 )))"
    export CUDA_VISIBLE_DEVICES
    echo "gpu-slot: slot $i of $slots, CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >&2
    exec "$@"  # the open, locked fd stays with COMMAND
  fi
  exec {fd}>&-
done
echo "gpu-slot: all $slots slot(s) of $per GPU(s) on this host are taken: scale ray-worker to at most $slots here" >&2
exit 3
