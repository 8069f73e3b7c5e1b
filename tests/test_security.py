"""Security defaults (docs/security.md): loopback servers, no code execution when loading files, no
credentials in the repository, and passwords in tracking URIs never printed or logged."""

from __future__ import annotations

import ast
import re
import subprocess
import time
from pathlib import Path

import pytest

from search.cli import main
from search.record.tracking import redact_uri
from tests.cluster.conftest import START_MLFLOW, _script_env, free_port

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("precrop", "trainers", "search")


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of the dotted function `name` (e.g. torch.load) in the project's packages."""
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                    found.append((path, node))
    return found


def test_every_torch_load_is_weights_only() -> None:
    calls = _calls("torch.load")
    assert calls, "expected the checkpoint and model loaders"
    for path, call in calls:
        flags = {k.arg: k.value for k in call.keywords}
        value = flags.get("weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"


@pytest.mark.parametrize(
    "unsafe", ["pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load"]
)
def test_no_unrestricted_deserializers(unsafe: str) -> None:
    allowed = {"torch.jit.load": {"search/results/export.py"}}  # reads back the TorchScript file it just wrote
    for path, call in _calls(unsafe):
        assert str(path.relative_to(ROOT)) in allowed.get(unsafe, set()), f"{unsafe} in {path}:{call.lineno}"


SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}"),
    re.compile(r"://[^/\s:@]+:[^@\s*]{3,}@"),  # user:password@host in a URI
]


def test_no_credentials_in_configs_or_cluster_files() -> None:
    files = [p for folder in ("configs", "cluster") for p in (ROOT / folder).rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        text = path.read_text(errors="replace")
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(ROOT)} matches {pattern.pattern}"


def test_uri_passwords_are_masked() -> None:
    assert redact_uri("postgresql://mlflow:hunter22@db.internal:5432/mlflow") == (
        "postgresql://mlflow:***@db.internal:5432/mlflow"
    )
    assert redact_uri("see http://u:p4ss@h:5000/x and sqlite:///a.db") == "see http://u:***@h:5000/x and sqlite:///a.db"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.mark.ray
def test_a_tracking_password_never_reaches_the_console(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()  # nothing listens there
    uri = f"http://alice:hunter22@127.0.0.1:{port}"
    code = main(["search", str(ROOT / "configs" / "quickstart.yaml"), "--set", f"mlflow.tracking_uri={uri}"])
    err = capfd.readouterr().err
    assert code == 2
    assert err.startswith(f"precrop: error: cannot reach MLflow tracking at http://alice:***@127.0.0.1:{port}")
    assert "hunter22" not in err


def _listening(port: int) -> set[str]:
    """The local IPv4 addresses with a TCP socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_the_mlflow_server_script_binds_loopback_by_default(tmp_path: Path) -> None:
    port = free_port()
    state = ["--state-dir", str(tmp_path / "state")]
    started = subprocess.run(
        ["bash", str(START_MLFLOW), "--port", str(port), "--backend", f"sqlite:///{tmp_path / 'db.sqlite'}",
         "--artifacts", str(tmp_path / "artifacts"), *state],
        env=_script_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        deadline = time.monotonic() + 30
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _listening(port) == {"127.0.0.1"}
    finally:
        subprocess.run(["bash", str(START_MLFLOW), "--stop", *state], env=_script_env(), timeout=60)


def test_the_mlflow_server_script_refuses_every_interface(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(START_MLFLOW), "--host", "0.0.0.0", "--backend", "sqlite:///x.db", "--artifacts", "a",
         "--state-dir", str(tmp_path)],
        env=_script_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "start_mlflow.sh: refusing to listen on every interface (0.0.0.0); pass a private address"
    )


def test_the_deserializer_scan_finds_what_it_looks_for() -> None:
    """The scan above is not vacuous: it sees the one allowed torch.jit.load."""
    assert [str(p.relative_to(ROOT)) for p, _ in _calls("torch.jit.load")] == ["search/results/export.py"]


def test_configs_are_read_by_a_safe_yaml_loader() -> None:
    """The one YAML reader (search/spec/limits.py) composes with a SafeLoader: no Python objects from YAML."""
    import yaml

    from search.spec.limits import _BoundedLoader, load_yaml

    assert issubclass(_BoundedLoader, yaml.SafeLoader)
    assert not issubclass(_BoundedLoader, yaml.FullLoader | yaml.UnsafeLoader)
    with pytest.raises(yaml.constructor.ConstructorError):
        load_yaml("!!python/object/apply:os.system ['true']")
