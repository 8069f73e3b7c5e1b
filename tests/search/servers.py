"""Throwaway servers on 127.0.0.1: an MLflow tracking server started by cluster/start_mlflow.sh, a search run
against it the way a user runs one, and a proxy that makes a server go silent for some requests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
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


class HoldingProxy:
    """A TCP proxy on 127.0.0.1 in front of an HTTP server that, once armed, accepts some requests and
    answers none of them until `release()`: a tracking server that went silent for them.

    It starts holding once a request that holds `arm_marker` has been forwarded, and from then on holds every
    request whose head starts with `hold` (both matched on the raw bytes the client writes). Held requests
    are forwarded, in order, on release.
    """

    def __init__(self, target_port: int, hold: bytes, arm_marker: bytes) -> None:
        self.target_port = target_port
        self.hold, self.arm_marker = hold, arm_marker
        self.armed = threading.Event()
        self.released = threading.Event()
        self.held = 0  # requests held so far (read by the test)
        self.forward_held = True
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self, forward: bool = True) -> None:
        """Answer again and hold nothing more; what was held is forwarded, or with `forward=False` dropped
        (as a server that never answered it would have), closing its connection."""
        self.forward_held = forward
        self.released.set()

    def close(self) -> None:
        """Stop accepting (open connections end with their clients)."""
        self.released.set()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to server, holding what must be held."""
        with contextlib.suppress(OSError):
            while data := client.recv(1 << 16):
                if self.armed.is_set() and not self.released.is_set() and data.startswith(self.hold):
                    with self._lock:
                        self.held += 1
                    self.released.wait()
                    if not self.forward_held:  # the request is never answered: its connection just ends
                        client.close()
                        upstream.close()
                        return
                upstream.sendall(data)
                if self.arm_marker in data:  # in the request's body, which may come in a write of its own
                    self.armed.set()
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
