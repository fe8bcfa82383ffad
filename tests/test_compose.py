"""docker-compose.yml, docker/compose.{multihost,offline}.yml and the Dockerfiles, checked without Docker.

No Docker engine runs here, so the compose files are read as data: every command must be a real
command of the project or of a tool installed in the image (its options checked against the
installed CLI's own option list), published ports bind to 127.0.0.1, no secret is written in the
files, the data and feature caches are read-only at the same path everywhere, and the image pins
what pyproject pins. Offline validators run when installed (check-jsonschema with the Compose
Specification's schema; Debian's docker-compose), and are skipped otherwise. The stack itself is
built and run by scripts/compose_smoke.sh (10-20 minutes, root, kept out of CI: docs/cluster.md).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
MULTIHOST = ROOT / "docker" / "compose.multihost.yml"
OFFLINE = ROOT / "docker" / "compose.offline.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PG_DOCKERFILE = ROOT / "docker" / "postgres.Dockerfile"
PG_ENTRYPOINT = ROOT / "docker" / "postgres-entrypoint.sh"
FLATTEN = ROOT / "docker" / "compose_flatten.py"
GPU_SLOT = ROOT / "docker" / "gpu-slot.sh"
ENV_EXAMPLE = ROOT / ".env.example"

HARNESS_IMAGE_SERVICES = {"mlflow", "ray-head", "ray-worker"}
RAY_SERVICES = {"ray-head", "ray-worker"}
# What docker/Dockerfile installs besides the project: COPY'd helpers by their name in the image.
IMAGE_HELPERS = {"gpu-slot": GPU_SLOT}
# The values a user's .env supplies; the required ones (${VAR:?...}) must be set to resolve.
FAKE_ENV = {"POSTGRES_PASSWORD": "pw-from-env", "RAY_AUTH_TOKEN": "token-from-env",
            "RAY_HEAD_IP": "10.0.0.1", "RAY_NODE_IP": "10.0.0.2"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class _Reset(list):
    """Compose's `!reset` tag (an override that empties a base value)."""


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} substitution, applied to a whole tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return type(value)(interpolate(v, env) for v in value)
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        got = env.get(name)
        if op in (":-", "-"):
            return got if got or (op == "-" and got is not None) else arg
        if op in (":?", "?") and not got:
            raise KeyError(f"${{{name}}} is required: {arg}")
        return got or ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def merge(base: dict, override: dict) -> dict:
    """The Compose merge rules this repository's overrides rely on: mappings merge key by key,
    `command` replaces, `ports` append, `volumes` merge by mount path, `!reset` empties."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, _Reset):
            out[key] = []
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif key == "volumes" and isinstance(out.get(key), list):
            targets = {_target(v) for v in value}
            out[key] = [v for v in out[key] if _target(v) not in targets] + list(value)
        elif key == "ports" and isinstance(out.get(key), list):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = value
    return out


def _target(volume) -> str:
    return volume["target"] if isinstance(volume, dict) else str(volume).split(":")[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(load(COMPOSE), FAKE_ENV)


@pytest.fixture(scope="module")
def multihost(compose) -> dict:
    return interpolate(merge(load(COMPOSE), load(MULTIHOST)), FAKE_ENV)


@pytest.fixture(scope="module")
def offline() -> dict:
    return interpolate(merge(load(COMPOSE), load(OFFLINE)), FAKE_ENV)


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _command(service: dict) -> list[str]:
    cmd = service.get("command")
    assert isinstance(cmd, list) and cmd, "commands are written as lists (no shell parsing)"
    return [str(c) for c in cmd]


# ------------------------------------------------------------------ commands are real commands


def _click_options(group, *path: str) -> set[str]:
    import click

    cmd = group
    ctx = click.Context(group)
    for name in path:
        cmd = cmd.get_command(ctx, name)
        assert cmd is not None, f"no subcommand {' '.join(path)}"
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}


def _mlflow_options(sub: str) -> set[str]:
    from mlflow.cli import cli

    return _click_options(cli, sub)


def _ray_options(sub: str) -> set[str]:
    from ray.scripts.scripts import cli

    return _click_options(cli, sub)


def _assert_options(argv: list[str], known: set[str], what: str) -> None:
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("-")]
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{what}: options {unknown} do not exist in the installed CLI"


def check_command(argv: list[str], image: str) -> None:
    """Fail unless argv is a command the service's image really has, with options that exist."""
    prog, rest = argv[0], argv[1:]
    if image.startswith(("postgres:", "gzsl-postgres:")):
        # The official image's entrypoint runs the server for `postgres`; so does
        # docker/postgres-entrypoint.sh in the offline image (Debian's package).
        assert prog in ("postgres", "pg_isready"), f"{prog}: not a command of the postgres image"
        return
    assert image.startswith("gzsl-harness:"), f"unexpected image {image}"
    if prog in IMAGE_HELPERS:
        assert IMAGE_HELPERS[prog].is_file(), f"{prog}: missing helper script"
        assert f"/usr/local/bin/{prog}" in DOCKERFILE.read_text(), f"{prog}: not installed by docker/Dockerfile"
        return check_command(rest, image)
    if prog == "mlflow":
        _assert_options(rest[1:], _mlflow_options(rest[0]), f"mlflow {rest[0]}")
    elif prog == "ray":
        _assert_options(rest[1:], _ray_options(rest[0]), f"ray {rest[0]}")
    elif prog == "python":
        if rest[0] == "-m":
            module = rest[1]
            assert module.startswith("harness") and importlib.util.find_spec(module), f"no module {module}"
            parser = importlib.import_module(module).get_args_parser()
            parser.parse_args(rest[2:])  # SystemExit (a test error) on an unknown option
        else:
            assert rest[0] == "-c", f"python {rest[0]}: expected -m MODULE or -c CODE"
            compile(rest[1], "<healthcheck>", "exec")
    else:
        scripts = pyproject()["project"]["scripts"]
        assert prog in scripts, f"{prog}: neither a tool of the image nor a console script of pyproject"
        module = scripts[prog].split(":")[0]
        assert importlib.util.find_spec(module), f"{prog} -> {module}: no such module"


def test_services_are_the_stack(compose):
    assert set(compose["services"]) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    for name in HARNESS_IMAGE_SERVICES:
        service = compose["services"][name]
        assert service["image"].startswith("gzsl-harness:")
        assert (service["build"]["context"], service["build"]["dockerfile"]) == (".", "docker/Dockerfile")


@pytest.mark.parametrize("name", ["postgres", "mlflow", "ray-head", "ray-worker"])
def test_command_is_real(compose, name):
    service = compose["services"][name]
    check_command(_command(service), service["image"])
    test = (service.get("healthcheck") or {}).get("test")
    if test:
        assert test[0] == "CMD", "healthchecks run a command, not a shell string"
        check_command(test[1:], service["image"])


def test_multihost_commands_are_real(multihost):
    for name in RAY_SERVICES:
        service = multihost["services"][name]
        check_command(_command(service), service["image"])


def test_check_command_rejects_what_does_not_exist():
    """The checks above would catch a typo."""
    with pytest.raises(AssertionError, match="--dashbord-port"):
        check_command(["ray", "start", "--head", "--dashbord-port=8265"], "gzsl-harness:latest")
    with pytest.raises(AssertionError):
        check_command(["mlflow", "serve-it"], "gzsl-harness:latest")
    with pytest.raises(AssertionError):
        check_command(["harness-nonexistent"], "gzsl-harness:latest")
    with pytest.raises(AssertionError):
        check_command(["python", "-m", "harness.nonexistent"], "gzsl-harness:latest")


def test_services_are_wired_to_each_other(compose):
    """Workers join the head's GCS port; Ray nodes log to the mlflow service's port; MLflow's
    store is the postgres service's database, with the artifacts served from a volume."""
    services = compose["services"]
    head, worker, mlflow = services["ray-head"], services["ray-worker"], services["mlflow"]
    head_port = next(a.split("=")[1] for a in _command(head) if a.startswith("--port="))
    assert f"--address=ray-head:{head_port}" in _command(worker)
    mlflow_port = next(a.split("=")[1] for a in _command(mlflow) if a.startswith("--port="))
    for name in RAY_SERVICES:
        assert _environment(services[name])["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
    env = _environment(mlflow)
    pg = services["postgres"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        f"postgresql://{pg['POSTGRES_USER']}:{FAKE_ENV['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}")
    assert "--serve-artifacts" in _command(mlflow)
    dest = next(a.split("=")[1] for a in _command(mlflow) if a.startswith("--artifacts-destination="))
    assert any(v.split(":")[1] == dest for v in mlflow["volumes"]), "artifacts are not on a volume"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow:*" in hosts and "127.0.0.1:*" in hosts, "MLflow would answer 403 to the Ray nodes"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_gpu_reservation_on_workers(compose):
    devices = compose["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    assert "gpu-slots:/run/gpu-slots" in compose["services"]["ray-worker"]["volumes"]
    assert "--num-gpus=0" in _command(compose["services"]["ray-head"]), "the head takes no GPU"


# ------------------------------------------------------------------ ports, secrets, caches


def _published(port) -> tuple[str | None, str]:
    if isinstance(port, dict):
        return port.get("host_ip"), str(port.get("published"))
    parts = str(port).split(":")
    return (parts[0], parts[1]) if len(parts) == 3 else (None, parts[0])


def test_ports_bind_to_loopback(compose):
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host_ip, _ = _published(port)
            assert host_ip == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"
            published += 1
    assert published >= 4  # mlflow, and Ray's GCS, dashboard and client ports


def test_multihost_ports(multihost):
    """Host networking for Ray (no published ports, token auth), MLflow on the head's private IP."""
    for name in RAY_SERVICES:
        service = multihost["services"][name]
        assert service["network_mode"] == "host"
        assert not service.get("ports")
        assert _environment(service)["RAY_AUTH_MODE"] == "token"
        assert _environment(service)["MLFLOW_TRACKING_URI"] == f"http://{FAKE_ENV['RAY_HEAD_IP']}:5000"
    assert "--dashboard-host=127.0.0.1" in _command(multihost["services"]["ray-head"])
    ips = {_published(p)[0] for p in multihost["services"]["mlflow"]["ports"]}
    assert ips == {"127.0.0.1", FAKE_ENV["RAY_HEAD_IP"]}


SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key|credential", re.I)
URI_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/:@\s]+:([^@\s]+)@", re.I)
ONLY_REFERENCES = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\})+$")


def _walk(tree, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _walk(v, (*path, str(i)))
    else:
        yield path, tree


def find_secrets(tree) -> list[str]:
    """Places where a secret is written literally instead of as a ${VAR} reference."""
    found = []
    for path, value in _walk(tree):
        if not isinstance(value, str):
            continue
        key = path[-1] if path else ""
        if SECRET_KEY.search(key) and not key.endswith(("_MODE", "_FILE")) and not ONLY_REFERENCES.match(value):
            found.append("/".join(path))
        for m in URI_USERINFO.finditer(value):
            if not ONLY_REFERENCES.match(m.group(1)):
                found.append("/".join(path))
        if re.search(r"(password|token)=(?!\$\{)\S", value, re.I):
            found.append("/".join(path))
    return found


@pytest.mark.parametrize("path", [COMPOSE, MULTIHOST], ids=["compose", "multihost"])
def test_no_secret_in_compose_files(path):
    raw = load(path)  # before interpolation: what the committed file says
    assert find_secrets(raw) == []
    text = path.read_text()
    for secret in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"):
        for m in re.finditer(rf"^\s*{secret}:\s*(.*)$", text, re.M):
            assert m.group(1).startswith("${"), f"{secret} is not a ${{VAR}} reference"


def test_secret_finder_finds_secrets():
    assert find_secrets({"environment": {"POSTGRES_PASSWORD": "hunter2"}}) == ["environment/POSTGRES_PASSWORD"]
    assert find_secrets({"x": "postgresql://mlflow:hunter2@postgres:5432/mlflow"}) == ["x"]
    assert find_secrets({"command": ["run", "--token=abc"]}) == ["command/1"]
    assert find_secrets({"environment": {"RAY_AUTH_MODE": "token",
                                         "X": "postgresql://u:${PW:?set}@h/db"}}) == []


def test_secrets_are_required_and_example_has_none():
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(load(COMPOSE), {"RAY_AUTH_TOKEN": "t"})
    with pytest.raises(KeyError, match="RAY_AUTH_TOKEN"):
        interpolate(load(COMPOSE), {"POSTGRES_PASSWORD": "p"})
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#"))
    for key in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"):
        assert example[key] == "", f".env.example must not hold a value for {key}"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
        assert ignored.returncode == 0, ".env is not ignored by git"
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".env"], cwd=ROOT, capture_output=True)
        assert tracked.returncode != 0, ".env is committed"


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for short and long volume syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = (v.get("source", ""), bool(v.get("read_only")))
        else:
            parts = v.split(":")
            out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def test_data_and_caches_read_only_at_the_same_path():
    folders = {"HARNESS_DATA_DIR": "/srv/gzsl/data", "HARNESS_CACHE_DIR": "/srv/gzsl/cache"}
    for config in (interpolate(load(COMPOSE), {**FAKE_ENV, **folders}),
                   interpolate(merge(load(COMPOSE), load(MULTIHOST)), {**FAKE_ENV, **folders})):
        for name, service in config["services"].items():
            for target, (source, read_only) in _mounts(service).items():
                if source in folders.values():
                    assert read_only, f"{name}: {source} mounted writable at {target}"
                    expected = "/data" if source == folders["HARNESS_DATA_DIR"] else "/cache"
                    assert target == expected, f"{name}: {source} at {target}, elsewhere at {expected}"
        for name in RAY_SERVICES:
            mounts = _mounts(config["services"][name])
            assert mounts["/cache"] == (folders["HARNESS_CACHE_DIR"], True), f"{name}: no read-only /cache"
            assert mounts["/data"] == (folders["HARNESS_DATA_DIR"], True), f"{name}: no read-only /data"
            assert _environment(config["services"][name])["HARNESS_CACHE"] == "/cache"


def test_ray_nodes_share_one_writable_runs_folder():
    """Ray Tune's storage must be one place for every node: the named volume on one host, the
    shared folder named in HARNESS_RUNS_DIR across hosts."""
    for env, expected in (({}, "runs"), ({"HARNESS_RUNS_DIR": "/mnt/nfs/runs"}, "/mnt/nfs/runs")):
        for config in (load(COMPOSE), merge(load(COMPOSE), load(MULTIHOST))):
            config = interpolate(config, {**FAKE_ENV, **env})
            for name in RAY_SERVICES:
                assert _mounts(config["services"][name])["/runs"] == (expected, False), name
            assert "runs" in config["volumes"]


def test_ray_auth_mode_is_the_same_everywhere(compose, multihost):
    for config in (compose, multihost):
        modes = {_environment(config["services"][n])["RAY_AUTH_MODE"] for n in RAY_SERVICES}
        assert len(modes) == 1, f"RAY_AUTH_MODE differs between Ray services: {modes}"
        tokens = {_environment(config["services"][n])["RAY_AUTH_TOKEN"] for n in RAY_SERVICES}
        assert tokens == {FAKE_ENV["RAY_AUTH_TOKEN"]}


# ------------------------------------------------------------------ the image


def test_dockerfile_matches_the_project():
    text = DOCKERFILE.read_text()
    deps = pyproject()["project"]["dependencies"]
    for pkg in ("torch", "torchvision"):
        pin = next(d for d in deps if re.match(rf"{pkg}\s*==", d)).replace(" ", "")
        assert re.search(rf"(?<![\w-]){re.escape(pin)}(?![\w.])", text), f"Dockerfile does not install {pin}"
    assert re.search(r"^RUN pip install (--\S+ )*\.( |$)", text, re.M), "the project is not installed"
    assert "psycopg[binary]" in text, "MLflow's postgresql:// store needs psycopg"
    import ray

    assert f"RAY_VERSION={ray.__version__}" in text, "the image's Ray differs from the project's environment"
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text()
    assert ignore.splitlines()[2] == "**", "the build context must exclude everything by default (.venv is 5 GB)"


# ------------------------------------------------------------------ gpu-slot


def test_gpu_slot_gives_each_worker_its_own_gpus(tmp_path):
    env = {**os.environ, "GPU_SLOT_DIR": str(tmp_path), "GPU_SLOT_TOTAL": "4", "GPUS_PER_WORKER": "2"}
    hold = ["sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"; exec sleep 30']
    first = subprocess.Popen(["bash", GPU_SLOT, *hold], env=env, stdout=subprocess.PIPE, text=True)
    second = subprocess.Popen(["bash", GPU_SLOT, *hold], env=env, stdout=subprocess.PIPE, text=True)
    try:
        got = {first.stdout.readline().strip(), second.stdout.readline().strip()}
        assert got == {"0,1", "2,3"}
        full = subprocess.run(["bash", GPU_SLOT, "true"], env=env, capture_output=True, text=True, timeout=10)
        assert full.returncode == 3 and "at most 2" in full.stderr
        first.kill()
        first.wait(timeout=10)
        again = subprocess.run(["bash", GPU_SLOT, "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"'], env=env,
                               capture_output=True, text=True, timeout=10)
        assert again.stdout.strip() in got, "a dead worker's slot was not freed"
    finally:
        for p in (first, second):
            p.kill()
            p.wait(timeout=10)
    cpu = subprocess.run(["bash", GPU_SLOT, "sh", "-c", 'echo "[$CUDA_VISIBLE_DEVICES]"'], capture_output=True,
                         text=True, env={**env, "GPU_SLOT_TOTAL": "0"}, timeout=10)
    assert cpu.stdout.strip() == "[]", "a host without GPUs starts a CPU-only worker"
    bad = subprocess.run(["bash", GPU_SLOT, "true"], env={**env, "GPUS_PER_WORKER": "two"},
                         capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "GPUS_PER_WORKER" in bad.stderr


# ------------------------------------------------------------------ offline validators


def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def test_compose_spec_schema(tmp_path):
    tool = _tool("check-jsonschema")
    if tool is None:
        pytest.skip("check-jsonschema not installed (pip install check-jsonschema)")
    merged = tmp_path / "multihost-merged.yml"
    merged.write_text(yaml.safe_dump(merge(load(COMPOSE), load(MULTIHOST))))
    merged_offline = tmp_path / "offline-merged.yml"
    merged_offline.write_text(yaml.safe_dump(merge(load(COMPOSE), load(OFFLINE))))
    for path in (COMPOSE, merged, OFFLINE, merged_offline):
        out = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(COMPOSE.read_text().replace("  postgres:\n    image:", "  postgres:\n    imagee:", 1))
    out = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(broken)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, "the schema check accepts anything"


def test_docker_compose_config(tmp_path):
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (apt-get install --no-install-recommends docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in FAKE_ENV}
    ok = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                        env={**clean, **FAKE_ENV}, timeout=60)
    assert ok.returncode == 0, ok.stderr
    # Without .env's secrets compose refuses to start (no empty password, no token-less Ray).
    empty = tmp_path / "empty.env"
    empty.write_text("")
    missing = subprocess.run([tool, "-f", str(COMPOSE), "--env-file", str(empty), "config", "-q"], cwd=ROOT,
                             capture_output=True, text=True, env=clean, timeout=60)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


# ------------------------------------------------------------------ builds without Docker Hub, either builder


BUILDKIT_ONLY = re.compile(r"^# *syntax=|^(COPY|ADD)\b.*--(chmod|link|checksum|parents|exclude)\b|^RUN\b.*--(mount|network|security)=|<<-?['\"]?[A-Z]",
                           re.M | re.I)


@pytest.mark.parametrize("path", [DOCKERFILE, PG_DOCKERFILE], ids=["harness", "postgres"])
def test_dockerfiles_build_with_the_legacy_builder(path):
    """No `# syntax=` frontend (pulled from Docker Hub) and no BuildKit-only instruction flags or
    heredocs: DOCKER_BUILDKIT=0 must build these files too; the base is a build argument."""
    text = path.read_text()
    assert not BUILDKIT_ONLY.search(text), f"{path.name}: BuildKit-only syntax: {BUILDKIT_ONLY.search(text).group(0)}"
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M) and re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert BUILDKIT_ONLY.search("COPY --chmod=755 a b") and BUILDKIT_ONLY.search("# syntax=docker/dockerfile:1.7")


def test_build_contexts_hold_what_the_dockerfiles_copy():
    """The legacy builder reads only the root .dockerignore, BuildKit <Dockerfile>.dockerignore: the
    same text, excluding everything but what the Dockerfiles COPY."""
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text()
    assert (ROOT / ".dockerignore").read_text() == ignore
    assert (ROOT / "docker" / "postgres.Dockerfile.dockerignore").read_text() == ignore
    allowed = [line[1:].removesuffix("/**") for line in ignore.splitlines() if line.startswith("!")]
    for path in (DOCKERFILE, PG_DOCKERFILE):
        for src in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", path.read_text(), re.M):
            for part in src.split():
                assert (ROOT / part).exists(), f"{path.name} copies {part}, which does not exist"
                assert any(part.rstrip("/") == a or part.startswith(a + "/") for a in allowed), (
                    f"{path.name} copies {part}, which .dockerignore keeps out of the context")
    for folder in ("wheelhouse", "certs"):
        assert (ROOT / "docker" / folder / "README.md").is_file()
        if shutil.which("git") and (ROOT / ".git").exists():
            probe = f"docker/{folder}/x.whl" if folder == "wheelhouse" else f"docker/{folder}/x.crt"
            assert subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT).returncode == 0


def test_compose_passes_the_build_arguments():
    """The base and torch are build arguments of every harness service, torch's default being
    pyproject's pins; the offline override sets only the base."""
    deps = pyproject()["project"]["dependencies"]
    pins = " ".join(next(d for d in deps if re.match(rf"{p}\s*==", d)).replace(" ", "") for p in ("torch", "torchvision"))
    text = DOCKERFILE.read_text()
    assert f'ARG TORCH_REQUIREMENTS="{pins}"' in text
    for name, service in interpolate(load(COMPOSE), FAKE_ENV)["services"].items():
        if name in HARNESS_IMAGE_SERVICES:
            args = service["build"]["args"]
            assert args["TORCH_REQUIREMENTS"] == pins and args["BASE_IMAGE"] == "python:3.11-slim-bookworm"
            assert set(args) <= set(re.findall(r"^ARG (\w+)", text, re.M))


def test_offline_override(offline, compose):
    """docker/compose.offline.yml: every image built from the local base, PostgreSQL from
    docker/postgres.Dockerfile with the official image's variables and data path (its own volume),
    everything else the base file's."""
    services = offline["services"]
    assert set(services) == set(compose["services"])
    for name in HARNESS_IMAGE_SERVICES:
        build = services[name]["build"]
        assert build["args"]["BASE_IMAGE"] == "local/bookworm:min"
        assert (build["context"], build["dockerfile"]) == (".", "docker/Dockerfile")
        assert services[name]["command"] == compose["services"][name]["command"]
    pg = services["postgres"]
    assert pg["image"].startswith("gzsl-postgres:")
    assert (pg["build"]["context"], pg["build"]["dockerfile"]) == (".", "docker/postgres.Dockerfile")
    assert pg["build"]["args"]["BASE_IMAGE"] == "local/bookworm:min"
    assert pg["environment"] == compose["services"]["postgres"]["environment"]
    assert _mounts(pg)["/var/lib/postgresql/data"] == ("pgdata-debian", False)
    assert "pgdata-debian" in offline["volumes"]
    check_command(_command(pg), pg["image"])
    check_command(pg["healthcheck"]["test"][1:], pg["image"])
    entry = PG_ENTRYPOINT.read_text()
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"):
        assert var in entry, f"postgres-entrypoint.sh ignores {var}"
    assert "/var/lib/postgresql/data" in entry and "/var/lib/postgresql/data" in PG_DOCKERFILE.read_text()
    assert subprocess.run(["bash", "-n", str(PG_ENTRYPOINT)]).returncode == 0
    assert find_secrets(load(OFFLINE)) == []


def test_offline_override_with_docker_compose():
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (apt-get install --no-install-recommends docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in FAKE_ENV}
    out = subprocess.run([tool, "-f", str(COMPOSE), "-f", str(OFFLINE), "config"], cwd=ROOT, capture_output=True,
                         text=True, env={**clean, **FAKE_ENV}, timeout=60)
    assert out.returncode == 0, out.stderr
    merged = yaml.safe_load(out.stdout)
    pg_volumes = merged["services"]["postgres"]["volumes"]
    assert len(pg_volumes) == 1 and "pgdata-debian" in str(pg_volumes), "v1 did not replace the data volume"
    assert merged["services"]["ray-head"]["build"]["args"]["TORCH_REQUIREMENTS"].startswith("torch==")


def test_flatten_for_compose_v1(tmp_path):
    """docker/compose_flatten.py: the multi-host override without `!reset`'s ports on Compose v1,
    and the smoke run's file without the GPU reservation."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (apt-get install --no-install-recommends docker-compose)")
    env = {**{k: v for k, v in os.environ.items() if k not in FAKE_ENV}, **FAKE_ENV,
           "PATH": f"{Path(tool).parent}:{os.environ['PATH']}"}
    out = tmp_path / "multihost.yml"
    run = subprocess.run([sys.executable, str(FLATTEN), "-f", str(COMPOSE), "-f", str(MULTIHOST),
                          "--drop", "services.ray-worker.deploy", "-o", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (out.stat().st_mode & 0o777) == 0o600, "the flattened file holds .env's secrets"
    flat = yaml.safe_load(out.read_text())
    for name in RAY_SERVICES:
        assert flat["services"][name]["network_mode"] == "host"
        assert not flat["services"][name].get("ports"), f"{name}: ports with host networking (v1 refuses)"
    assert "deploy" not in flat["services"]["ray-worker"]
    check = subprocess.run([tool, "-f", str(out), "config", "-q"], capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0, check.stderr
