"""Security scans of the repository (issue 9, part 4).

1. No unsafe deserialisation of user-supplied files in the package sources: no pickle.load /
   pickle.loads / Unpickler, no torch.load without weights_only=True, no yaml.load without a
   safe loader, no numpy load with allow_pickle=True.
2. Servers are reachable from this host only by default: docker-compose.yml publishes the MLflow
   and Ray dashboard ports on 127.0.0.1, and the code and scripts that start servers never bind
   0.0.0.0 / :: by default.
3. No secret in the files git tracks (or would track): private keys, AWS-style keys, tokens,
   password literals, a committed .env.

Every scanner is first run on planted bad samples, so a scanner that silently matches nothing
fails here rather than passing vacuously.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "models", "baselines", "search_spaces")
SCRIPT_DIRS = ("scripts", "bench")

# ---------------------------------------------------------------- 1. unsafe deserialisation

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "pandas"}
_PICKLE_FUNCS = {"load", "loads", "Unpickler", "read_pickle"}


def _dotted(node: ast.AST) -> str:
    """'a.b.c' for Name/Attribute chains, '' otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Findings 'file:line: what' of unsafe deserialisation in one Python source."""
    tree = ast.parse(source, filename)
    found = []
    aliases: dict[str, str] = {}  # local name -> module it stands for (import pickle as pk)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            for a in node.names:
                if root in _PICKLE_MODULES and a.name in _PICKLE_FUNCS and root != "pandas":
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {a.name}")
                if root == "torch" and a.name == "load":
                    aliases[a.asname or a.name] = "torch.load"
                if root == "yaml" and a.name == "load":
                    aliases[a.asname or a.name] = "yaml.load"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if not name:
            continue
        head, _, rest = name.partition(".")
        full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
        module, _, func = full.rpartition(".")
        where = f"{filename}:{node.lineno}"
        if module in _PICKLE_MODULES and func in _PICKLE_FUNCS:
            found.append(f"{where}: {name}(...) unpickles (arbitrary code on a crafted file)")
        elif full == "torch.load" and not _is_true(_kw(node, "weights_only")):
            found.append(f"{where}: {name}(...) without weights_only=True")
        elif full == "yaml.load":
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if not (loader is not None and "Safe" in _dotted(loader)):
                found.append(f"{where}: {name}(...) without Loader=yaml.SafeLoader")
        elif full in ("yaml.unsafe_load", "yaml.full_load"):
            found.append(f"{where}: {name}(...) is not safe_load")
        elif full in ("numpy.load", "np.load") and _is_true(_kw(node, "allow_pickle")):
            found.append(f"{where}: {name}(..., allow_pickle=True) unpickles object arrays")
    return found


def _package_files() -> list[Path]:
    files = []
    for pkg in (*PACKAGES, *SCRIPT_DIRS):
        files += sorted((ROOT / pkg).rglob("*.py"))
    return [f for f in files if ".venv" not in f.parts]


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.load(open('x', 'rb'))",
        "import pickle as pk\npk.loads(b'')",
        "from pickle import load\n",
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "from torch import load\nload('m.pt')",
        "import yaml\nyaml.load(open('c.yml'))",
        "import yaml\nyaml.load(s, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(s)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import joblib\njoblib.load('m.joblib')",
    ],
)
def test_scanner_catches_planted_unsafe_load(snippet):
    assert unsafe_loads(snippet), f"the scanner missed: {snippet!r}"


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('m.pt', weights_only=True, map_location='cpu')",
        "import yaml\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)",
        "import numpy as np\nnp.load('a.npz', allow_pickle=False)",
        "import json\njson.load(open('x'))",
    ],
)
def test_scanner_accepts_safe_load(snippet):
    assert unsafe_loads(snippet) == []


def test_package_sources_have_no_unsafe_deserialisation():
    files = _package_files()
    assert len(files) > 10, "package sources not found"
    found = []
    for path in files:
        found += unsafe_loads(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "unsafe deserialisation of user-supplied files:\n" + "\n".join(found)


# ---------------------------------------------------------------- 2. loopback binding

MLFLOW_PORT = 5000
RAY_DASHBOARD_PORT = 8265
_OPEN_HOSTS = ("0.0.0.0", "::", "[::]", "*")


def _compose_file() -> Path | None:
    for name in ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"):
        if (ROOT / name).is_file():
            return ROOT / name
    return None


def _published(port_entry) -> tuple[str, str, str]:
    """(host_ip, published, target) of one compose `ports:` entry, short or long syntax."""
    if isinstance(port_entry, dict):
        return (str(port_entry.get("host_ip", "")), str(port_entry.get("published", "")),
                str(port_entry.get("target", "")))
    # "${MLFLOW_PORT:-5000}" is the published port 5000 unless .env says otherwise
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(port_entry)).split("/")[0]
    if text.startswith("["):  # [::1]:5000:5000
        host, _, rest = text[1:].partition("]:")
        published, _, target = rest.partition(":")
        return host, published, target
    parts = text.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return "", "", parts[0]


def open_ports(compose: dict, watched: tuple[int, ...] = (MLFLOW_PORT, RAY_DASHBOARD_PORT)) -> list[str]:
    """Port mappings that publish a watched container port on a non-loopback host address."""
    bad = []
    for name, service in (compose.get("services") or {}).items():
        service = service or {}
        for entry in service.get("ports") or []:
            host, published, target = _published(entry)
            target_port = target.split("-")[0]
            if not target_port.isdigit() or int(target_port) not in watched:
                continue
            if host not in ("127.0.0.1", "localhost", "::1"):
                bad.append(f"service {name}: port {entry!r} is published on {host or 'all interfaces'}")
        if service.get("network_mode") == "host":
            command = " ".join(service.get("command") or []) if isinstance(service.get("command"), list) \
                else str(service.get("command") or "")
            for host in _OPEN_HOSTS:
                if re.search(rf"--(host|dashboard-host)[= ]+{re.escape(host)}(\s|$)", command):
                    bad.append(f"service {name}: network_mode host and {command!r} binds {host}")
    return bad


def test_port_check_catches_planted_open_ports():
    planted = {"services": {
        "mlflow": {"ports": ["5000:5000"]},
        "head": {"ports": ["0.0.0.0:8265:8265", {"target": 8265, "published": 8266}]},
        "ok": {"ports": ["127.0.0.1:5000:5000", {"target": 8265, "published": 8265, "host_ip": "127.0.0.1"},
                         "6379:6379"]},
        "hostnet": {"network_mode": "host", "command": "mlflow server --host 0.0.0.0 --port 5000"},
    }}
    bad = open_ports(planted)
    assert len(bad) == 4, bad
    assert not any("service ok" in b for b in bad)


def test_compose_binds_mlflow_and_ray_dashboard_to_loopback():
    path = _compose_file()
    if path is None:
        pytest.skip("no docker-compose.yml in the repository yet")
    import yaml

    compose = yaml.safe_load(path.read_text())
    bad = open_ports(compose)
    assert not bad, f"{path.name}: ports reachable from other hosts:\n" + "\n".join(bad)
    mapped = [
        int(_published(e)[2].split("-")[0])
        for s in (compose.get("services") or {}).values() for e in ((s or {}).get("ports") or [])
        if _published(e)[2].split("-")[0].isdigit()
    ]
    assert MLFLOW_PORT in mapped or any(
        (s or {}).get("network_mode") == "host" for s in compose["services"].values()
    ), f"{path.name}: the MLflow port {MLFLOW_PORT} is not published at all (the check would be vacuous)"


def test_compose_overlays_on_host_network_keep_the_dashboard_on_loopback():
    """An overlay that puts a service on the host's network must not bind the dashboard / MLflow to 0.0.0.0."""
    overlays = sorted((ROOT / "docker").glob("*.y*ml")) if (ROOT / "docker").is_dir() else []
    if not overlays:
        pytest.skip("no compose overlays")
    import yaml

    class ComposeLoader(yaml.SafeLoader):
        """Safe loading plus Compose's merge tags (!reset, !override)."""

    def plain(loader, node):
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node)
        return loader.construct_scalar(node)

    for tag in ("!reset", "!override"):
        ComposeLoader.add_constructor(tag, plain)
    for path in overlays:
        compose = yaml.load(path.read_text(), Loader=ComposeLoader) or {}
        bad = [b for b in open_ports({"services": {
            name: {k: v for k, v in (svc or {}).items() if k != "ports"}
            for name, svc in (compose.get("services") or {}).items()}}) if "network_mode" in b]
        assert not bad, f"{path.name}:\n" + "\n".join(bad)


_BIND_OPTION = re.compile(r"""(--host|--dashboard-host|--node-ip-address|dashboard_host|host)\b\s*[=:,]?\s*["']?"""
                          r"""(0\.0\.0\.0|::|\[::\])["']?""")


def open_binds(text: str) -> list[str]:
    """Lines that bind a server to every interface (0.0.0.0 / ::)."""
    return [f"line {i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
            if "0.0.0.0" in line or _BIND_OPTION.search(line)]


def test_bind_scan_catches_planted_binds():
    assert open_binds("mlflow server --host 0.0.0.0 --port 5000")
    assert open_binds("ray.init(dashboard_host='0.0.0.0')")
    assert open_binds("ray start --head --dashboard-host :: --port 6379")
    assert not open_binds("mlflow server --host 127.0.0.1 --port 5000")


def test_code_and_scripts_bind_servers_to_loopback_by_default():
    files = _package_files() + sorted((ROOT / "scripts").glob("*.sh"))
    bad = []
    for path in files:
        for hit in open_binds(path.read_text()):
            bad.append(f"{path.relative_to(ROOT)} {hit}")
    assert not bad, "servers bound to all interfaces:\n" + "\n".join(bad)


def test_servers_the_harness_starts_use_loopback():
    """Where the harness launches `mlflow server` or a Ray head itself, the host it passes is 127.0.0.1."""
    launches = []
    for path in _package_files() + sorted((ROOT / "scripts").glob("*.sh")):
        text = path.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            if re.search(r"mlflow\W+server|\bray\W+start\b.*--head|\"--head\"", line):
                launches.append((path, i, line))
    if (ROOT / "scripts" / "stack.sh").is_file():
        assert launches, "scripts/stack.sh starts servers, but none was found (the check would be vacuous)"
    for path, i, line in launches:
        text = path.read_text()
        if "mlflow" in line:
            # the --host given to mlflow server in the same file, if any, is loopback
            hosts = re.findall(r"--host[\"',\s=]+([\w.:\[\]$\"{}-]+)", text)
            hosts = [h.strip("\"'") for h in hosts]
            assert all(h in ("127.0.0.1", "localhost") or h.startswith("$") for h in hosts), \
                f"{path.relative_to(ROOT)}:{i}: mlflow server host {hosts}"
        if re.search(r"--dashboard-host", text):
            dash = re.findall(r"--dashboard-host[\"',\s=]+([\w.:\[\]]+)", text)
            assert all(h in ("127.0.0.1", "localhost") for h in dash), \
                f"{path.relative_to(ROOT)}:{i}: ray dashboard host {dash}"


# ---------------------------------------------------------------- 3. secrets in the repository

# Built from pieces so this file does not match its own patterns.
_SECRET_PATTERNS = {
    "private key": re.compile("-----BEGIN ((RSA|EC|DSA|OPENSSH|PGP|ENCRYPTED) )?PRIVATE " + "KEY( BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)" + r"[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}", re.I),
    "GitHub token": re.compile(r"\bgh[pousr]_" + r"[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[baprs]-" + r"[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza" + r"[0-9A-Za-z_-]{35}\b"),
    "password literal": re.compile(
        r"""(?i)(?<![a-z])(password|passwd|pwd|secret|api_key|apikey|access_token)\s*[=:]\s*(['"])([^'"\s$]{4,})\2"""),
    "password in a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:([^\s/@'\"$]{3,})@", re.I),
}
# Unquoted `KEY: value` / `KEY=value` lines of configuration files (compose, .env, ini).
_UNQUOTED_PASSWORD = re.compile(
    r"""(?i)(?<![a-z])(password|passwd|secret|api_key|apikey|access_token)\s*[=:]\s*([^\s'"$#{}]{4,})\s*$""")
_CONFIG_SUFFIXES = (".yml", ".yaml", ".env", ".ini", ".cfg", ".conf", ".toml", ".properties")
# Placeholders that are obviously not secrets (documentation and test fixtures).
_PLACEHOLDERS = re.compile(r"(?i)^(x+|\*+|changeme|example|placeholder|password|secret|dummy|test|none|<.*>)$")


_PASSWORD_KINDS = ("password literal", "password in a URL")


def secrets_in(text: str, config_file: bool = False, keys_only: bool = False) -> list[str]:
    """Findings 'line N: what'; `config_file` also flags unquoted `password: value` lines;
    `keys_only` checks keys and tokens only (tests plant fake passwords to test secret finders)."""
    found = []
    for i, line in enumerate(text.splitlines(), 1):
        m = _UNQUOTED_PASSWORD.search(line) if config_file and not keys_only else None
        if m and not _PLACEHOLDERS.match(m.group(2)):
            found.append(f"line {i}: unquoted password in a configuration file")
        for what, pattern in _SECRET_PATTERNS.items():
            if keys_only and what in _PASSWORD_KINDS:
                continue
            m = pattern.search(line)
            if not m:
                continue
            value = m.group(m.lastindex) if what in _PASSWORD_KINDS else m.group(0)
            if what in _PASSWORD_KINDS and _PLACEHOLDERS.match(value):
                continue
            found.append(f"line {i}: {what}")
    return found


def _repo_files() -> list[str]:
    """Tracked files plus untracked ones git would add (not ignored): what a commit can carry."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


@pytest.mark.parametrize(
    "planted",
    [
        "-----BEGIN RSA PRIVATE " + "KEY-----\nMIIEow...",
        "-----BEGIN OPENSSH PRIVATE " + "KEY-----",
        "aws_access_key_id = AKIA" + "ABCDEFGHIJKLMNOP",
        "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "token = 'ghp_" + "a" * 36 + "'",
        'password = "' + 'hunter22"',
        "POSTGRES_PASSWORD: '" + "s3cr3tpass'",
        "uri = postgresql://mlflow:" + "s3cr3t@db:5432/mlflow",
    ],
)
def test_secret_scan_catches_planted_secrets(planted):
    assert secrets_in(planted), f"the scanner missed: {planted!r}"


def test_secret_scan_catches_unquoted_config_passwords():
    assert secrets_in("    POSTGRES_PASSWORD: " + "mlflowpw", config_file=True)
    assert secrets_in("MLFLOW_TRACKING_PASSWORD=" + "abc123", config_file=True)
    assert not secrets_in("    POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-changeme}", config_file=True)


def test_secret_scan_of_tests_checks_keys_but_not_planted_passwords():
    planted = "uri = postgresql://mlflow:" + "hunter2x@db/mlflow\n" + "key = AKIA" + "ABCDEFGHIJKLMNOP"
    assert secrets_in(planted, keys_only=True) == ["line 2: AWS access key id"]


def test_secret_scan_ignores_placeholders_and_env_references():
    assert secrets_in('password = "changeme"\npassword: "${POSTGRES_PASSWORD}"\npassword = os.environ["PW"]') == []


def test_repository_holds_no_secret():
    files = _repo_files()
    assert any(f.startswith("harness/") for f in files), "git ls-files found no package file"
    env_files = [f for f in files if Path(f).name == ".env" or Path(f).name.startswith(".env.")
                 and not Path(f).name.endswith((".example", ".sample", ".template"))]
    assert not env_files, f"environment files committed: {env_files}"
    key_files = [f for f in files if Path(f).suffix in (".pem", ".key", ".p12", ".pfx") or Path(f).name in
                 ("id_rsa", "id_ed25519", "id_ecdsa", ".netrc", ".pgpass", "credentials")]
    assert not key_files, f"key or credential files committed: {key_files}"
    found = []
    for name in files:
        path = ROOT / name
        if path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        config = path.suffix in _CONFIG_SUFFIXES or path.name.startswith(".env")
        found += [f"{name} {hit}" for hit in secrets_in(text, config, keys_only=name.startswith("tests/"))]
    assert not found, "secrets in the repository:\n" + "\n".join(found)
