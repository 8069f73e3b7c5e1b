"""Fixtures for the cluster tests: an MLflow server started by cluster/start_mlflow.sh and a multi-node
Ray cluster on 127.0.0.1 (tests/cluster/local_cluster.py), both stopped on success and on failure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.search.conftest import ROOT, search_env

START_MLFLOW = ROOT / "cluster" / "start_mlflow.sh"
LOCAL_CLUSTER = Path(__file__).with_name("local_cluster.py")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class MlflowServer:
    """A running tracking server: its URL and where its artifacts land on disk."""

    url: str
    artifacts: Path
    database: Path


def _script_env() -> dict[str, str]:
    env = search_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # this venv's `mlflow`
    return env


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The MLflow server the cluster YAMLs start, here with sqlite and a local artifacts directory."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = MlflowServer(f"http://127.0.0.1:{port}", folder / "artifacts", folder / "mlflow.db")
    state = ["--state-dir", str(folder / "state")]
    started = subprocess.run(
        ["bash", str(START_MLFLOW), "--host", "127.0.0.1", "--port", str(port), "--backend",
         f"sqlite:///{server.database}", "--artifacts", str(server.artifacts), *state],
        env=_script_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield server
    finally:
        subprocess.run(["bash", str(START_MLFLOW), "--stop", *state], env=_script_env(), timeout=60)


class LocalCluster:
    """Head (no CPUs) plus named worker nodes, in a child process that obeys `kill NAME` and `stop`."""

    def __init__(self, workers: dict[str, dict[str, float]], private: bool = False) -> None:
        """`private`: Ray's temp folder is a fresh one, so the address file `ray start` writes is not where a
        search run beside this test (another pytest worker) looks for a cluster to join."""
        env = _script_env()
        self.temp: str | None = tempfile.mkdtemp(prefix="ray-", dir="/tmp") if private else None
        if self.temp is not None:
            env["RAY_TMPDIR"] = self.temp  # short: Ray's socket paths must fit in 107 characters
        self.process = subprocess.Popen(
            [sys.executable, str(LOCAL_CLUSTER), json.dumps(workers)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the local Ray cluster did not start")
        info: dict[str, Any] = json.loads(line)
        self.address: str = info["address"]
        self.head: str = info["head"]
        self.workers: dict[str, str] = info["workers"]

    def kill(self, name: str) -> None:
        """Remove worker node `name` at once, as if its machine were lost."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"kill {name}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == f"killed {name}"

    def stop(self) -> None:
        """Shut every node down; kill the whole process group if that does not finish in a minute."""
        try:
            if self.process.stdin is not None and self.process.poll() is None:
                self.process.stdin.write("stop\n")
                self.process.stdin.close()
            self.process.wait(timeout=60)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            pass
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            if self.temp is not None:
                shutil.rmtree(self.temp, ignore_errors=True)


def cluster_search_env(server: MlflowServer, storage: Path) -> dict[str, str]:
    """What a cluster head exports for the driver (cluster/setup_head.sh), for a local cluster."""
    env = search_env()
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        MLFLOW_TRACKING_URI=server.url,
        PRECROP_STORAGE_PATH=str(storage),
    )
    return env
