"""Extraction sharded over a Ray cluster: shard I of N is one Ray task writing `shard-I-of-N/`.

Every node must see the images at the same --data-root and the cache folder at the same
--cache-dir (a shared filesystem); otherwise run `extract --shard I/N` on each node yourself and
copy the `shard-I-of-N` folders into one cache folder afterwards: the reader treats them as one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from harness.errors import InputError
from harness.features.extract import ExtractOptions, ExtractResult, extract


def _run_shard(paths: Sequence[Path], options: ExtractOptions, data_root: Path | None) -> ExtractResult | str:
    try:
        return extract(paths, options, data_root)
    except InputError as err:  # travels back as a value so the driver can print the one line
        return f"InputError: {err}"


def extract_on_ray(paths: Sequence[Path], options: ExtractOptions, address: str, num_shards: int,
                   data_root: Path | None = None) -> list[ExtractResult]:
    """Run the N shards as Ray tasks (one GPU each when the cluster has GPUs) and wait for them."""
    import ray

    from harness.cluster import check_address, ray_session

    if num_shards < 1:
        raise InputError(f"--shards: expected at least 1, got {num_shards}")
    joined = None if address == "local" else check_address(address)
    with ray_session(joined, worker_logs=True):
        gpus = ray.cluster_resources().get("GPU", 0) if options.device in (None, "", "auto", "cuda") else 0
        if options.device == "cuda" and not gpus:
            raise InputError("--device cuda: the Ray cluster has no GPU")
        device = "cuda" if gpus else "cpu"
        task = ray.remote(_run_shard).options(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=2)
        refs = {
            task.remote(paths, replace(options, shard=(i, num_shards), device=device), data_root): i
            for i in range(num_shards)
        }
        results: list[ExtractResult] = []
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            value = ray.get(done[0])
            if isinstance(value, str):
                raise InputError(f"shard {refs[done[0]]}/{num_shards}: {value.removeprefix('InputError: ')}")
            print(f"shard {refs[done[0]]}/{num_shards} done: {value.written} items extracted", file=sys.stderr)
            results.append(value)
        return sorted(results, key=lambda r: str(r.folder))
