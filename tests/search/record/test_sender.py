"""The trial's MLflow sender: queuing never waits on the server, order is kept, a server that comes back
gets everything, and a trial's end gives up on one that does not."""

from __future__ import annotations

import threading
from collections.abc import Callable

from requests.exceptions import ConnectionError as RequestsConnectionError

from search.record.sender import Sender

WAIT_S = 60  # an upper bound for events that happen at once on an idle machine; never reached when passing


def _recorder(sent: list[int], number: int) -> Callable[[], None]:
    return lambda: sent.append(number)


class _Hanging:
    """A request that hangs until `release` is set; `started` once it runs."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self) -> None:
        self.started.set()
        self.release.wait(WAIT_S)


def test_submitting_never_waits_on_a_request_that_hangs() -> None:
    hangs, sent = _Hanging(), []
    sender = Sender(retry_every_s=0)
    sender.submit("first", hangs)
    assert hangs.started.wait(WAIT_S)
    for number in range(500):  # while the first request hangs, the trial queues on without waiting
        sender.submit(f"epoch {number}", _recorder(sent, number))
    assert sent == [] and sender.lost == ""
    hangs.release.set()
    assert sender.close(WAIT_S)
    assert sent == list(range(500))


def test_a_server_that_comes_back_gets_every_request_in_order() -> None:
    failures, sent, attempts = 3, [], []

    def flaky() -> None:
        attempts.append(1)
        if len(attempts) <= failures:
            raise RequestsConnectionError("connection refused")
        sent.append(0)

    sender, done = Sender(retry_every_s=0), threading.Event()
    sender.submit("opening the run", flaky)
    for number in range(1, 20):
        sender.submit(f"epoch {number}", _recorder(sent, number))
    sender.submit("last", done.set)
    assert done.wait(WAIT_S)  # the trial is still training: the sender retries for as long as it takes
    assert sender.close(WAIT_S)
    assert sent == list(range(20)) and len(attempts) == failures + 1
    assert sender.lost == ""  # made good


def test_closing_gives_up_at_the_next_failure_and_says_what_was_not_sent() -> None:
    sent: list[int] = []

    def down() -> None:
        raise RequestsConnectionError("connection refused")

    sender = Sender(retry_every_s=3600)  # the close wakes the pause: no hour is waited
    sender.submit("logging epoch 1", down)
    sender.submit("logging epoch 2", _recorder(sent, 2))
    assert not sender.close(WAIT_S)
    assert sender.lost == "logging epoch 1: connection refused" and sent == []


def test_closing_stops_waiting_on_a_request_that_never_answers() -> None:
    never = threading.Event()
    sender = Sender()
    sender.submit("logging the model", lambda: never.wait(WAIT_S))
    assert not sender.close(0.05)  # returns although the request still hangs
    assert sender.lost == "the server did not answer before the trial ended"
    never.set()


def test_a_full_queue_drops_and_says_so_instead_of_blocking() -> None:
    hangs, sent = _Hanging(), []
    sender = Sender(queue_size=3)
    sender.submit("first", hangs)
    assert hangs.started.wait(WAIT_S)
    for number in range(5):
        sender.submit(f"epoch {number}", _recorder(sent, number))
    assert sender.lost == "epoch 3: more than 3 requests waited"
    hangs.release.set()
    assert not sender.close(WAIT_S)  # sent what it held, but two requests were dropped: reconcile re-logs
    assert sent == [0, 1, 2]


def test_a_request_after_close_is_not_sent_and_is_reported() -> None:
    sent: list[int] = []
    sender = Sender()
    assert sender.close(WAIT_S)
    sender.submit("ending the run", _recorder(sent, 1))
    assert sent == [] and sender.lost == "ending the run: after the run's logging was closed"
    assert not sender.close(WAIT_S)


def test_a_request_that_fails_for_its_own_reason_is_dropped_not_retried() -> None:
    """Only tracking failures are tried again: a request with a bug would fail again forever."""
    sent: list[int] = []
    sender = Sender(retry_every_s=0)
    sender.submit("bad", lambda: 1 / 0)
    sender.submit("epoch 2", _recorder(sent, 2))
    assert not sender.close(WAIT_S)
    assert sent == [2] and sender.lost == "bad: ZeroDivisionError: division by zero"
