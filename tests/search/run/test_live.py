"""The live board of a running search (search/run/live.py): its numbers, its line off a terminal, its table
on one, and the Tune callback that feeds it (search/run/progress.py), all driven by a hand-moved clock."""

from __future__ import annotations

import io
import math
import pickle
import re
from types import SimpleNamespace
from typing import Any

import pytest

from search.run.live import LiveView, SearchBoard
from search.run.progress import ProgressAndRunCloser


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _board(clock: Clock, trials: int = 4) -> SearchBoard:
    return SearchBoard(trials, "macs", clock=clock)


def test_a_running_trial_shows_its_epoch_accuracy_elapsed_and_eta() -> None:
    clock = Clock()
    board = _board(clock)
    board.trial_started("t1", {"allocator": "synexp", "budget": 0.25}, epochs=10)
    for epoch in (1, 2, 3):
        clock.now += 10
        board.trial_reported("t1", {"epoch": epoch, "val_acc": epoch / 6})
    # 3 epochs in 30 s: 10 s an epoch, 7 left
    assert board.running["t1"].eta_s(clock.now) == pytest.approx(70.0)
    assert board.line() == (
        "progress 30 s: 0/4 ended, 1 running; no front yet | t1 synexp 0.250 epoch 3/10 val 50.0%, ETA 1m10s"
    )


def test_a_trial_restored_mid_training_counts_its_pace_from_the_epochs_seen_here() -> None:
    clock = Clock()
    board = _board(clock)
    board.trial_started("t1", {"allocator": "uniform", "budget": 0.5}, epochs=10)
    clock.now += 100  # loading its checkpoint and the first epoch here
    board.trial_reported("t1", {"epoch": 6, "val_acc": 0.7})
    assert board.running["t1"].eta_s(clock.now) is None  # no epoch timed by this driver yet
    clock.now += 20
    board.trial_reported("t1", {"epoch": 8, "val_acc": 0.8})
    assert board.running["t1"].eta_s(clock.now) == pytest.approx(20.0)  # 10 s an epoch, 2 left


def test_counts_and_the_front_follow_the_rule_of_precrop_pareto() -> None:
    clock = Clock()
    board = _board(clock, trials=6)
    ends = [("a", "completed", 0.90, 4e5), ("b", "completed", 0.95, 2e6), ("c", "completed", 0.89, 1e6),
            ("d", "stopped", 0.99, 1e5), ("e", "failed", math.nan, math.nan),
            ("f", "completed", 0.97, 3e6)]  # fmt: skip
    for trial_id, outcome, accuracy, cost in ends:
        board.trial_started(trial_id, {"allocator": "synexp", "budget": 0.5}, epochs=2)
        board.trial_ended(trial_id, outcome, accuracy, cost)
    # c is beaten by a (cheaper and more accurate); d stopped early, so it is no candidate
    assert board.front() == [(4e5, 0.90), (2e6, 0.95), (3e6, 0.97)]
    assert board.counts_text() == "6/6 ended (4 completed, 1 failed, 1 stopped), 0 running"
    assert board.front_text() == "front of 3: macs 4e+05-3e+06, val 90.0%-97.0%"
    board.trial_ended("g", "completed", 0.99, 5e5, within_limits=False)  # over a hard limit: never on the front
    assert board.front() == [(4e5, 0.90), (2e6, 0.95), (3e6, 0.97)]


def test_off_a_terminal_a_line_comes_at_most_every_n_seconds() -> None:
    clock = Clock()
    stream = io.StringIO()
    view = LiveView(_board(clock), stream, every_s=30)
    view.start()
    assert view.live is None  # a StringIO is no terminal
    view.tick()  # nothing at the start: a board with nothing on it says nothing
    clock.now += 29
    view.tick(epoch_seen=True)
    clock.now += 1
    view.tick()
    clock.now += 29
    view.tick()
    clock.now += 1
    view.tick()
    lines = stream.getvalue().splitlines()
    assert lines == ["progress 30 s: 0/4 ended, 0 running; no front yet",
                     "progress 1m00s: 0/4 ended, 0 running; no front yet"]  # fmt: skip


def test_with_zero_seconds_a_line_comes_at_every_epoch_and_only_then() -> None:
    clock = Clock()
    stream = io.StringIO()
    view = LiveView(_board(clock), stream, every_s=0)
    view.tick()
    view.tick(epoch_seen=True)
    view.tick(epoch_seen=True)
    assert len(stream.getvalue().splitlines()) == 2


def test_on_a_terminal_the_table_shows_each_running_trial() -> None:
    clock = Clock()
    board = _board(clock)
    board.trial_started("t1", {"allocator": "synexp", "budget": 0.25}, epochs=8)
    board.trial_started("t2", {"allocator": "uniform", "budget": 0.75}, epochs=8)
    for epoch in (1, 2):
        clock.now += 10
        board.trial_reported("t2", {"epoch": epoch, "val_acc": 0.625})
    board.trial_ended("t0", "completed", 0.9, 1234.0)
    stream = io.StringIO()
    view = LiveView(board, stream, every_s=30, terminal=True)
    view.console.width = 120
    view.console.print(board.table())
    text = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())  # the terminal's styles
    assert text.startswith("20 s: 1/4 ended (1 completed), 2 running; front of 1: macs 1.23e+03, val 90.0%\n")
    t2 = next(line for line in text.splitlines() if " t2 " in line)
    for cell in ("uniform", "0.750", "2/8", "62.5%", "20 s", "1m00s"):
        assert cell in t2, (cell, t2)
    t1 = next(line for line in text.splitlines() if " t1 " in line)
    assert "0/8" in t1 and t1.rstrip(" │|").endswith("-")  # no epoch yet: no accuracy, no ETA


def _trial(trial_id: str, status: str = "RUNNING", **result: float) -> Any:
    """A stand-in for Tune's Trial with what the callback reads."""
    config = {"allocator": "synexp", "budget": 0.5, "lr": 0.1, "weight_decay": 1e-4, "label_smoothing": 0.0,
              "batch_size": 64}  # fmt: skip
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, last_result=result, error_file=None,
                           local_path=None, checkpoint=None)  # fmt: skip


def test_the_tune_callback_feeds_the_board_and_prints_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    closer = ProgressAndRunCloser("sqlite:///unused.db", "0", "parent", trials=3, cost="macs", epochs=2, every_s=0)
    closer.offline = True  # no MLflow here: nothing to close
    closer.setup()
    closer.on_step_begin(0, [])
    first = _trial("a")
    closer.on_trial_start(0, [first], first)
    closer.on_trial_result(1, [first], first, {"epoch": 1, "val_acc": 0.5})
    first.last_result = {"epoch": 2, "val_acc": 0.75, "macs": 1000.0, "trial_complete": 1}
    closer.on_trial_complete(2, [first], first)
    closer.on_experiment_end([first])
    out = capsys.readouterr().out
    assert "start a: synexp budget 0.500" in out
    assert "progress 0 s: 0/3 ended, 1 running; no front yet | a synexp 0.500 epoch 1/2 val 50.0%" in out
    assert "done  a (1/3): completed after epoch 2, val 75.00%, macs 1,000" in out


def test_a_resumed_driver_counts_the_trials_that_ended_before_the_kill(capsys: pytest.CaptureFixture[str]) -> None:
    closer = ProgressAndRunCloser("sqlite:///unused.db", "0", "parent", trials=3, cost="macs", epochs=2, every_s=0)
    assert closer.view.board.trials == 3  # the view is made before the pickle, as in a running driver
    restored = pickle.loads(pickle.dumps(closer))  # what Tune's saved Tuner gives back
    assert restored.__dict__["_view"] is None
    restored.offline = True  # no MLflow here: nothing to close
    ended = _trial("a", "TERMINATED", epoch=2, val_acc=0.75, macs=1000.0, trial_complete=1)
    stopped = _trial("b", "TERMINATED", epoch=1, val_acc=0.5, macs=500.0)
    restored.on_step_begin(0, [ended, stopped, _trial("c", "PENDING")])
    third = _trial("c")
    third.last_result = {"epoch": 2, "val_acc": 0.8, "macs": 2000.0, "trial_complete": 1}
    restored.on_trial_complete(1, [ended, stopped, third], third)
    out = capsys.readouterr().out
    assert "done  c (3/3): completed" in out
    assert restored.view.board.front_text() == "front of 2: macs 1e+03-2e+03, val 75.0%-80.0%"
