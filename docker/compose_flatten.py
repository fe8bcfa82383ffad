#!/usr/bin/env python3
"""Merge compose files into one file that Compose v1 (docker-compose 1.28+) can run.

    python3 docker/compose_flatten.py -f docker-compose.yml -f docker/compose.multihost.yml > multihost.yml
    docker-compose -f multihost.yml up -d ...

Compose v1 has no `!reset` (Compose >= 2.24 empties a base value with it) and no way to delete a
key in an override. This tool reads each file with `!reset` understood, lets `docker-compose
config` do the merge and the ${VAR} interpolation of the rest, then empties what was reset and
drops what `--drop` names (e.g. `--drop services.ray-worker.deploy` for a host without GPUs:
scripts/compose_smoke.sh). The output holds .env's values (secrets included): keep it private
(it is written with mode 600 by -o) and never commit it. Needs PyYAML (a dependency of Debian's
docker-compose) and a `docker-compose` (or `docker compose`) on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


class _Reset:
    def __init__(self, value):
        self.value = value


class _Loader(yaml.SafeLoader):
    pass


def _reset(loader, node):
    if isinstance(node, yaml.SequenceNode):
        return _Reset([])
    if isinstance(node, yaml.MappingNode):
        return _Reset({})
    return _Reset(None)


_Loader.add_constructor("!reset", _reset)


def split_resets(tree, path=()):
    """(tree without the !reset keys, [(path, empty value)]) of one compose file."""
    resets = []
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            if isinstance(value, _Reset):
                resets.append(((*path, key), value.value))
                continue
            out[key], sub = split_resets(value, (*path, key))
            resets.extend(sub)
        return out, resets
    return tree, resets


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def flatten(files: list[Path], drops: list[str], env_file: Path | None = None) -> dict:
    project_dir = files[0].resolve().parent
    resets = []
    with tempfile.TemporaryDirectory() as tmp:
        args = []
        for i, path in enumerate(files):
            tree, found = split_resets(yaml.load(path.read_text(), Loader=_Loader))
            resets.extend(found)
            plain = Path(tmp) / f"{i}-{path.name}"
            plain.write_text(yaml.safe_dump(tree, sort_keys=False))
            args += ["-f", str(plain)]
        cmd = [*compose_cmd(), "--project-directory", str(project_dir)]
        if env_file:
            cmd += ["--env-file", str(env_file)]
        out = subprocess.run([*cmd, *args, "config"], capture_output=True, text=True, cwd=project_dir)
        if out.returncode != 0:
            sys.exit(f"compose_flatten: {' '.join(cmd)} config failed:\n{out.stderr}")
    merged = yaml.safe_load(out.stdout)
    for path, empty in resets:
        node = merged
        for key in path[:-1]:
            node = node.get(key, {})
        if path[-1] in node:
            node[path[-1]] = empty
        if node.get(path[-1]) in ([], {}, None):
            node.pop(path[-1], None)
    for drop in drops:
        *parents, last = drop.split(".")
        node = merged
        for key in parents:
            node = node.get(key, {})
        node.pop(last, None)
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--file", action="append", type=Path, required=True, help="compose files, in order")
    parser.add_argument("--drop", action="append", default=[], help="a dotted key to delete, e.g. services.ray-worker.deploy")
    parser.add_argument("--env-file", type=Path, help="the .env to interpolate with (default: the project folder's)")
    parser.add_argument("-o", "--output", type=Path, help="write here (mode 600) instead of stdout")
    args = parser.parse_args(argv)
    text = yaml.safe_dump(flatten(args.file, args.drop, args.env_file), sort_keys=False)
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
