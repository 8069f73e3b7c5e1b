"""Throwaway servers on 127.0.0.1 for the opt-in browser and PostgreSQL tests: an MLflow tracking server
started by cluster/start_mlflow.sh, and a search run against it the way a user runs one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.search.conftest import ROOT, search_env

START_MLFLOW = ROOT / "cluster" / "start_mlflow.sh"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def script_env() -> dict[str, str]:
    """search_env() with this interpreter's bin directory first on PATH, so the scripts find `mlflow`."""
    env = search_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@contextmanager
def mlflow_server(folder: Path, backend: str) -> Iterator[str]:
    """Run an MLflow server on a free 127.0.0.1 port with `backend`, artifacts under `folder`; yield its URL."""
    port = free_port()
    state = ["--state-dir", str(folder / "mlflow-state")]
    try:
        started = subprocess.run(
            ["bash", str(START_MLFLOW), "--host", "127.0.0.1", "--port", str(port), "--backend", backend,
             "--artifacts", str(folder / "mlflow-artifacts"), *state],
            env=script_env(), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert started.returncode == 0, f"start_mlflow.sh failed:\n{started.stdout}{started.stderr}"
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(START_MLFLOW), "--stop", *state], env=script_env(), timeout=60, check=False)


def run_search_into(
    folder: Path, config: Path, tracking_uri: str, *overrides: str, timeout: float = 400
) -> subprocess.CompletedProcess[str]:
    """`python -m search.cli search CONFIG --set OVERRIDE...` in `folder`, logging to `tracking_uri`."""
    env = search_env()
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PRECROP_STORAGE_PATH=str(folder / "ray_results"))
    sets = [arg for override in overrides for arg in ("--set", override)]
    return subprocess.run(
        [sys.executable, "-m", "search.cli", "search", str(config), *sets], cwd=folder, env=env,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
