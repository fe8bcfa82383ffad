"""The one way Ray is started or joined (search, reproduce, distributed extraction), with the node checks.

A quick, clear failure instead of a hanging ray.init: `--address HOST:PORT` (or `auto`) joins an existing cluster. Before ray.init the address is
checked with a plain TCP connect under a timeout, so an unreachable cluster is one line and exit
2 before any trial starts. Without `--address` a private local instance is started
(address="local": a stale cluster file of an earlier run must not be joined by accident).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from harness.errors import InputError

CONNECT_TIMEOUT_S = 5.0
RAY_CLUSTER_FILE = Path("/tmp/ray/ray_current_cluster")


def _split(address: str) -> tuple[str, int]:
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    return host.strip("[]"), int(port)


def resolve_address(address: str) -> str:
    """'auto' -> the address of the cluster this machine runs (RAY_ADDRESS, else Ray's cluster file)."""
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS")
    if env and env not in ("auto", "local"):
        return env
    try:
        found = RAY_CLUSTER_FILE.read_text().strip()
    except OSError:
        found = ""
    if not found:
        raise InputError("--address auto: no running Ray cluster found on this machine (start one with `ray start --head`)")
    return found


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """Resolve and TCP-check a cluster address; InputError (one line) when nothing answers."""
    resolved = resolve_address(address)
    host, port = _split(resolved)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        shown = address if address == resolved else f"{address} ({resolved})"
        raise InputError(f"--address {shown}: Ray cluster unreachable ({err or type(err).__name__})") from err
    return resolved


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def init_ray(address: str | None, num_cpus: int | None = None, verbose: bool = False,
             worker_logs: bool | None = None) -> bool:
    """Join `address` or start a private local Ray; True when this call did (and must shut it down).

    A process that already has Ray initialised keeps it (False). `worker_logs` shows the tasks'
    output on this console (default: only with `verbose`).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Checkpoints every epoch force frequent experiment snapshots (wanted: resume loses little);
    # Tune warns about each one.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's new console output prints the experiment path to stdout even at verbose=0; the
    # search has its own progress bar and summary.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": verbose if worker_logs is None else worker_logs,
              "configure_logging": True, "logging_level": "INFO" if verbose else "WARNING"}
    try:
        if address is None:
            # A private instance needs no token; without this Ray 2.60 writes ~/.ray/auth_token, after
            # which `ray start --head` on this machine turns token auth on and refuses workers.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as err:
        where = f"--address {address}: could not join the Ray cluster" if address else "local Ray: could not start"
        raise InputError(f"{where} ({_one_line(err)})") from err
    if not verbose:
        # Tune logs every failed trial and callback error with its traceback; the search records
        # them (trials table, MLflow tags, a failed count on the progress bar) and ends with one
        # line when it cannot go on. --verbose shows Ray's own logs.
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return True


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, verbose: bool = False,
                worker_logs: bool | None = None) -> Iterator[dict[str, float]]:
    """Ray for the length of a block, yielding the cluster's resources; shut down only if started here."""
    started = init_ray(address, num_cpus, verbose, worker_logs)
    try:
        yield cluster_resources()
    finally:
        if started:
            shutdown_ray()


def _capacity_error(settings, where: str, cpus: float, gpus: float) -> InputError:
    if settings.gpus_per_trial > gpus:
        option, value, limit = "--gpus-per-trial", settings.gpus_per_trial, f"{gpus:g} GPU(s)"
    else:
        option, value, limit = "--cpus-per-trial", settings.cpus_per_trial, f"{cpus:g} CPU(s)"
    return InputError(
        f"{option} {value:g}: expected at most the {limit} of one node ({where}: {cpus:g} CPUs, {gpus:g} GPUs "
        f"on its largest node); a trial asking for more could never start"
    )


def check_local_capacity(settings) -> None:
    """Before starting a local Ray instance: can one trial fit on this machine at all?"""
    cpus = float(os.cpu_count() or 1)
    gpus = 0.0
    if settings.gpus_per_trial > 0:
        import torch

        gpus = float(torch.cuda.device_count())
    if settings.cpus_per_trial > cpus or settings.gpus_per_trial > gpus:
        raise _capacity_error(settings, "this machine", cpus, gpus)


def check_cluster_capacity(settings, address: str) -> None:
    """After joining a cluster: does some live node offer what one trial asks for?

    Tune would otherwise wait forever for resources no node has (an autoscaling cluster that
    could add such a node is not covered: start one node of that size first).
    """
    import ray

    best_cpu = best_gpu = 0.0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        cpu, gpu = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        if cpu >= settings.cpus_per_trial and gpu >= settings.gpus_per_trial:
            return
        best_cpu, best_gpu = max(best_cpu, cpu), max(best_gpu, gpu)
    raise _capacity_error(settings, f"the Ray cluster at {address}", best_cpu, best_gpu)
