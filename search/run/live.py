"""What a running search looks like while it runs: each running trial, the counts, the front so far.

`SearchBoard` holds the numbers (no Ray, no terminal, a clock passed in, so tests drive it by hand);
`LiveView` shows them: a table redrawn in place when the output is a terminal (rich's `Live`: Ray Tune's
own reporters print whole tables again and again, which floods a terminal and any log), else one compact
line at most every `every_s` seconds (0: at every epoch) for logs and CI. The same numbers are in MLflow:
each epoch's metrics on the trial's run, the outcome and the front on the parent run at the end.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from search.spec.schema import Outcome, ResultKey

Clock = Callable[[], float]


@dataclass
class RunningTrial:
    """One trial between its start and its end, as the board shows it."""

    method: str
    budget: float
    epochs: int
    started: float  # clock time
    epoch: int = 0  # the last epoch it reported (0: none yet)
    accuracy: float = math.nan  # validation accuracy at that epoch
    first_epoch: int = 0  # a restored trial's first epoch in this driver is not its first epoch
    first_at: float = 0.0  # when this driver saw it start counting

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the pace of the epochs seen by this driver; None before the first of them."""
        done = self.epoch - self.first_epoch
        if done <= 0 or self.epoch >= self.epochs:
            return None
        per_epoch = (now - self.first_at) / done
        return per_epoch * (self.epochs - self.epoch)


@dataclass
class SearchBoard:
    """The numbers of a running search: running trials, outcome counts, and the accuracy-cost front of the
    trials that trained to the end (the same rule as `precrop pareto`)."""

    trials: int
    cost: str
    clock: Clock = time.monotonic
    running: dict[str, RunningTrial] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    completed: list[tuple[float, float]] = field(default_factory=list)  # (cost, accuracy)
    started_at: float = field(default=math.nan)

    def __post_init__(self) -> None:
        if math.isnan(self.started_at):
            self.started_at = self.clock()

    def trial_started(self, trial_id: str, config: Mapping[str, Any], epochs: int) -> None:
        """A trial began (or began again from a checkpoint)."""
        now = self.clock()
        budget = float(config.get("budget", math.nan))
        self.running[trial_id] = RunningTrial(str(config.get("allocator", "?")), budget, epochs, now, first_at=now)

    def trial_reported(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """A trial finished an epoch."""
        trial = self.running.get(trial_id)
        epoch = int(result.get(ResultKey.EPOCH, 0) or 0)
        if trial is None or epoch <= 0:
            return
        if trial.epoch == 0 and epoch > 1:  # restored from a checkpoint: pace counts from here
            trial.first_epoch, trial.first_at = epoch, self.clock()
        trial.epoch = epoch
        trial.accuracy = float(result.get(ResultKey.ACCURACY, math.nan))

    def trial_ended(
        self, trial_id: str, outcome: str, accuracy: float, cost: float, within_limits: bool = True
    ) -> None:
        """A trial ended: completed, stopped early, diverged or failed (and, if completed, within the search's
        hard limits or not: only trials within them join the front)."""
        self.running.pop(trial_id, None)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome == Outcome.COMPLETED and within_limits and math.isfinite(accuracy) and math.isfinite(cost):
            self.completed.append((cost, accuracy))

    def front(self) -> list[tuple[float, float]]:
        """The completed trials no other completed trial beats on both accuracy and cost, cheapest first."""
        front: list[tuple[float, float]] = []
        best = -math.inf
        for cost, accuracy in sorted(self.completed, key=lambda p: (p[0], -p[1])):
            if accuracy > best:
                front.append((cost, accuracy))
                best = accuracy
        return front

    def counts_text(self) -> str:
        """'3/8 ended (2 completed, 1 stopped), 2 running'."""
        ended = sum(self.outcomes.values())
        parts = [f"{n} {name}" for name, n in sorted(self.outcomes.items())]
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"{ended}/{self.trials} ended{detail}, {len(self.running)} running"

    def front_text(self) -> str:
        """'front of 2: macs 4.8e+05-2e+06, val 95.8%-97.9%', or that there is none yet."""
        front = self.front()
        if not front:
            return "no front yet"
        costs, accuracies = [c for c, _ in front], [a for _, a in front]
        return (f"front of {len(front)}: {self.cost} {_span(costs, '{:,.3g}')}, "
                f"val {_span(accuracies, '{:.1%}')}")  # fmt: skip

    def line(self) -> str:
        """The whole board as one line, for a log."""
        now = self.clock()
        trials = "; ".join(_trial_text(tid, t, now) for tid, t in sorted(self.running.items()))
        head = f"progress {_duration(now - self.started_at)}: {self.counts_text()}; {self.front_text()}"
        return f"{head}{' | ' + trials if trials else ''}"

    def table(self) -> Group:
        """The whole board as a heading line and a table, for a terminal."""
        now = self.clock()
        heading = Text(f"{_duration(now - self.started_at)}: {self.counts_text()}; {self.front_text()}")
        table = Table()
        for header in ("trial", "method", "budget", "epoch", "val acc", "elapsed", "ETA"):
            table.add_column(header, justify="left" if header in ("trial", "method") else "right")
        for trial_id, trial in sorted(self.running.items()):
            eta = trial.eta_s(now)
            table.add_row(trial_id, trial.method, f"{trial.budget:.3f}", f"{trial.epoch}/{trial.epochs}",
                          _percent(trial.accuracy), _duration(now - trial.started),
                          "-" if eta is None else _duration(eta))  # fmt: skip
        return Group(heading, table)


class LiveView:
    """Shows a `SearchBoard` on `stream`: a live table on a terminal, else a line every `every_s` seconds.

    Event lines (`note`) go above the table. The table is redrawn by rich's refresh thread, so the board
    is read under a lock the callers also take when they change it (`changing`).
    """

    def __init__(self, board: SearchBoard, stream: IO[str], every_s: float, terminal: bool | None = None) -> None:
        self.board = board
        self.stream = stream
        self.every_s = every_s
        self.lock = threading.Lock()
        self.terminal = stream.isatty() if terminal is None else terminal
        self.console = Console(file=stream, force_terminal=self.terminal)
        self.live: Live | None = None
        self.last_line = board.started_at  # the first line after every_s, not an empty board at once

    def start(self) -> None:
        """Begin showing the board (on a terminal, the live table appears)."""
        if self.terminal and self.live is None:
            # anything else printed meanwhile (Ray's worker logs, warnings) goes above the table
            self.live = Live(_Locked(self), console=self.console, refresh_per_second=2, transient=True,
                             redirect_stdout=True, redirect_stderr=True)  # fmt: skip
            self.live.start()

    def stop(self) -> None:
        """Stop redrawing; the table goes away (the search's summary follows)."""
        if self.live is not None:
            self.live.stop()
            self.live = None

    def note(self, text: str) -> None:
        """An event line (a trial started or ended), above the table on a terminal."""
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def tick(self, epoch_seen: bool = False) -> None:
        """Off a terminal: print the board's line if `every_s` has passed (with 0, at each epoch seen)."""
        if self.terminal:
            return
        now = self.board.clock()
        due = epoch_seen if self.every_s == 0 else now - self.last_line >= self.every_s
        if due:
            self.last_line = now
            with self.lock:
                text = self.board.line()
            print(text, file=self.stream, flush=True)


class _Locked:
    """The board's table, rendered under the view's lock (rich calls `__rich__` at every refresh)."""

    def __init__(self, view: LiveView) -> None:
        self.view = view

    def __rich__(self) -> Group:
        with self.view.lock:
            return self.view.board.table()


def _trial_text(trial_id: str, trial: RunningTrial, now: float) -> str:
    eta = trial.eta_s(now)
    left = "" if eta is None else f", ETA {_duration(eta)}"
    return (f"{trial_id} {trial.method} {trial.budget:.3f} epoch {trial.epoch}/{trial.epochs} "
            f"val {_percent(trial.accuracy)}{left}")  # fmt: skip


def _percent(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.1%}"


def _span(values: list[float], pattern: str) -> str:
    low, high = min(values), max(values)
    return pattern.format(low) if low == high else f"{pattern.format(low)}-{pattern.format(high)}"


def _duration(seconds: float) -> str:
    """'42 s', '3m05s', '2h07m'."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
