"""A background thread that sends a trial's MLflow requests, so that a slow or silent server never holds
up training.

The trial's thread only queues requests (`Sender.submit` never waits); one daemon thread sends them in
order. When a request fails (the server is gone, or accepts and never answers until MLflow's timeout), the
thread keeps that request and tries it again every `retry_every_s`, so nothing queued is lost while the
server comes back. When the trial ends it calls `close`: the thread gets until the queue is empty, but
gives up at the first failure once closing (the server did not answer in time) or at `close`'s own
timeout. Whatever was not sent is then named by `lost`, and the trial's Tune results, which hold every
epoch, are what the driver or `precrop reconcile` logs again (search/record/reconcile.py).

Why not MLflow's asynchronous logging (`log_batch(..., synchronous=False)`): its queue is unbounded, a
failed batch is dropped rather than retried once the server answers, it covers metrics, params and tags
but not runs, artifacts or ending a run, and a trial only learns of a failure by waiting on it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from search.record import tracking

# a trial logs a few requests per epoch: the bound only matters when the server is gone for thousands of epochs
QUEUE_SIZE = 10_000
RETRY_EVERY_S = 5.0
IDLE_POLL_S = 0.2  # how often an idle thread looks whether the trial closed it


@dataclass
class _State:
    """What the sending thread and the trial's thread share (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    lost: str = ""  # the first failure not yet made good, or why requests were dropped
    dropped: int = 0
    closing: bool = False


class Sender:
    """Send requests (callables) in order on one daemon thread; `submit` never blocks."""

    def __init__(self, name: str = "mlflow-sender", retry_every_s: float = RETRY_EVERY_S,
                 queue_size: int = QUEUE_SIZE) -> None:  # fmt: skip
        self._queue: queue.Queue[tuple[str, Callable[[], object]]] = queue.Queue(maxsize=queue_size)
        self._state = _State()
        self._retry_every_s = retry_every_s
        self._wake = threading.Event()  # set by close: stop a retry pause early
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def lost(self) -> str:
        """Why some request has not reached the server ('' while everything submitted was sent or is queued
        behind requests that succeed)."""
        with self._state.lock:
            return self._state.lost

    def submit(self, what: str, request: Callable[[], object]) -> None:
        """Queue `request` (described by `what` in `lost`); drop it, and say so in `lost`, if the queue is full."""
        with self._state.lock:
            if self._state.closing:  # a request after the trial's logging was closed is not sent
                self._state.lost = self._state.lost or f"{what}: after the run's logging was closed"
                return
        try:
            self._queue.put_nowait((what, request))
        except queue.Full:
            with self._state.lock:
                self._state.dropped += 1
                self._state.lost = self._state.lost or f"{what}: more than {self._queue.maxsize} requests waited"

    def close(self, timeout: float) -> bool:
        """Let the thread send what is queued, waiting at most `timeout` seconds; True when all of it was sent.
        The thread gives up at its first failure from now on (the server did not answer in time)."""
        with self._state.lock:
            if self._state.closing:  # closed before: the same answer again
                return not self._state.lost and not self._thread.is_alive()
            self._state.closing = True
        self._wake.set()
        self._thread.join(timeout)
        with self._state.lock:
            if self._thread.is_alive():  # a request still hangs: the server accepts but does not answer
                self._state.lost = self._state.lost or "the server did not answer before the trial ended"
            return not self._state.lost and not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                what, request = self._queue.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                with self._state.lock:
                    if self._state.closing:
                        return  # closed and everything sent
                continue
            while not self._send(what, request):
                with self._state.lock:
                    if self._state.closing:
                        return  # closing and the server failed again: the rest stays for reconcile
                self._wake.wait(self._retry_every_s)

    def _send(self, what: str, request: Callable[[], object]) -> bool:
        try:
            request()
        except tracking.TRACKING_FAILURES as exc:
            with self._state.lock:
                self._state.lost = self._state.lost or f"{what}: {tracking.redact_uri(tracking.first_line(exc))}"
            return False
        except Exception as exc:  # not the server's doing: trying again would fail again, so it is dropped
            with self._state.lock:
                self._state.dropped += 1
                self._state.lost = self._state.lost or f"{what}: {type(exc).__name__}: {tracking.first_line(exc)}"
            return True
        with self._state.lock:
            if not self._state.dropped:
                self._state.lost = ""  # the server answers again and nothing was dropped: all made good
        return True
