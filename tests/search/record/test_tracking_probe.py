"""The first request to a tracking server is bounded: a server that accepts and never answers is one line."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from search.record import tracking


def test_the_artifact_timeout_applies_inside_and_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracking.BOUNDED_RETRIES:  # restored after the test
        monkeypatch.delenv(name, raising=False)
    with tracking.request_timeout(tracking.ARTIFACT_TIMEOUT_S):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    tracking.bound_http_retries()  # the metadata bound is replaced for the upload, then put back
    with tracking.request_timeout(tracking.ARTIFACT_TIMEOUT_S):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == tracking.BOUNDED_RETRIES["MLFLOW_HTTP_REQUEST_TIMEOUT"]


def test_a_users_own_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with tracking.request_timeout(tracking.ARTIFACT_TIMEOUT_S):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
    tracking.bound_http_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """An HTTP address on 127.0.0.1 that accepts connections and never answers; the accepted sockets."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        server.close()
        for conn in accepted:
            conn.close()


@pytest.mark.slow  # about 14 s: two attempts of 7 s each
def test_a_server_that_never_answers_is_one_line_after_two_attempts(
    silent_server: tuple[str, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, accepted = silent_server
    for name in tracking.BOUNDED_RETRIES:  # restored after the test
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(tracking.TrackingError) as caught:
        tracking.client_for(uri)
    message = str(caught.value)
    assert message.startswith(f"cannot reach MLflow tracking at {uri}") and "\n" not in message
    assert len(accepted) == 2  # one request and one retry: 2 x 7 s (MLflow's defaults: 8 x 120 s)
