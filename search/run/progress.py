"""A Tune callback in the driver: a line per trial event, the live board (search/run/live.py), and no
child run left RUNNING.

A trial ends its own MLflow run, but a trial that Tune stops (ASHA) may have its worker torn down
before that last request gets out; this callback closes such runs from the driver as a backstop.
It also keeps Tune from restarting a trial from a checkpoint storage no longer holds (search/record/checkpoints.py).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from search.record import tracking
from search.record.checkpoints import WILL_RESTORE, repair_trial
from search.run.live import LiveView, SearchBoard
from search.run.trial_errors import failure_reason
from search.spec.config import limit_excess
from search.spec.schema import ACTIVE_STATUSES, Outcome, ResultKey

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial
    from ray.tune.stopper import Stopper


class ProgressAndRunCloser(Callback):
    """Prints trial starts and ends and shows the live board; ends a trial's MLflow run if the trial could not."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, trials: int, cost: str,
                 epochs: int = 0, every_s: float = 30.0, limits: dict[str, float] | None = None) -> None:  # fmt: skip
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.trials = trials
        self.cost = cost
        self.epochs = epochs
        self.every_s = every_s
        self.limits = dict(limits or {})  # hard limits: a trial over one is not on the board's front
        self.started_at = time.perf_counter()
        self._client: MlflowClient | None = None
        self._view: LiveView | None = None
        self.offline = False  # MLflow stopped answering: leave the runs to the reconciliation at the end
        self.lost_trials: set[str] = set()
        self.checked_checkpoints: set[tuple[str, str]] = set()  # (trial id, path) whose existence was checked
        self._counted_restored = False  # the board holds the trials a resumed search had ended before its kill

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (the Tuner saves its callbacks): drop the client and the view (a resumed driver makes
        its own, and counts the trials that ended before from Tune's restored trials)."""
        state = self.__dict__.copy()
        state["_client"] = None
        state["_view"] = None
        state["_counted_restored"] = False
        return state

    @property
    def view(self) -> LiveView:
        """The live board on stdout, made on first use (in the driver, never in a pickle)."""
        if self.__dict__.get("_view") is None:
            board = SearchBoard(self.trials, self.cost)
            self._view = LiveView(board, sys.stdout, self.__dict__.get("every_s", 30.0))
        assert self._view is not None
        return self._view

    def setup(self, stop: Stopper | None = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:  # fmt: skip
        """Tune starts the experiment: show the board."""
        self.view.start()

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Every trial ended: take the board away before the summary prints."""
        self.close_view()

    def close_view(self) -> None:
        """Stop redrawing the board (also when the driver stops early: Ctrl-C, an error)."""
        if self.__dict__.get("_view") is not None:
            self.view.stop()

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Off a terminal, print the board's line when it is due."""
        self.view.tick()

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, created on first use."""
        if self._client is None:
            self._client = tracking.lazy_client(self.tracking_uri)
        return self._client

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Before Tune (re)starts a trial from its latest checkpoint (resume, retry), make sure storage still
        holds it; else point Tune at the newest readable one (see search/record/checkpoints.py). Each checkpoint
        is looked at once."""
        checked: set[tuple[str, str]] = self.__dict__.setdefault("checked_checkpoints", set())  # older pickles lack it
        if not self.__dict__.get("_counted_restored"):
            self._count_restored(trials)
        for trial in trials:
            checkpoint = trial.checkpoint if trial.status in WILL_RESTORE else None
            if checkpoint is None or (trial.trial_id, checkpoint.path) in checked:
                continue
            checked.add((trial.trial_id, checkpoint.path))
            try:
                note = repair_trial(trial)
            except Exception as exc:  # never let bookkeeping kill the search: Tune then reports the trial's error
                note = f"could not check {trial.trial_id}'s checkpoint: {tracking.first_line(exc)}"
            if note:
                self._print(f"note: {note}")

    def _count_restored(self, trials: list[Trial]) -> None:
        """A resumed search's board starts with the trials that ended before the kill."""
        self._counted_restored = True
        with self.view.lock:
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    result = trial.last_result or {}
                    outcome = Outcome.FAILED if trial.status == "ERROR" else _outcome(result)
                    accuracy, cost = result.get(ResultKey.ACCURACY, float("nan")), result.get(self.cost, float("nan"))
                    self.view.board.trial_ended(trial.trial_id, outcome, accuracy, cost, self._within_limits(result))

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Print what the trial will try; it joins the board."""
        c = trial.config
        with self.view.lock:
            self.view.board.trial_started(trial.trial_id, c, self.__dict__.get("epochs", 0))
        self._print(
            f"start {trial.trial_id}: {c.get('allocator')} budget {c.get('budget', 0):.3f}, lr {c.get('lr', 0):.3g}, "
            f"wd {c.get('weight_decay', 0):.2g}, ls {c.get('label_smoothing', 0):.2f}, batch {c.get('batch_size')}"
        )

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        """Update the board; say so, once per trial, when a trial could no longer log to MLflow."""
        with self.view.lock:
            self.view.board.trial_reported(trial.trial_id, result)
        self.view.tick(epoch_seen=True)
        if result.get(ResultKey.TRACKING_LOST) and trial.trial_id not in self.lost_trials:
            self.lost_trials.add(trial.trial_id)
            epoch = int(result.get(ResultKey.EPOCH, 0))
            self._print(f"warning: {trial.trial_id} cannot reach MLflow since epoch {epoch}; "
                        "it goes on training and Tune keeps its results for re-logging")  # fmt: skip

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Print the outcome; close the run if the trial left it open."""
        result = trial.last_result or {}
        outcome = _outcome(result)
        epoch = int(result.get(ResultKey.EPOCH, 0))
        accuracy, cost = result.get(ResultKey.ACCURACY, float("nan")), result.get(self.cost, float("nan"))
        with self.view.lock:
            self.view.board.trial_ended(trial.trial_id, outcome, accuracy, cost, self._within_limits(result))
        self._print(f"done  {trial.trial_id} ({self._ended()}/{self.trials}): {outcome} after epoch {epoch}, "
                    f"val {accuracy:.2%}, {self.cost} {cost:,.4g}")  # fmt: skip
        self._close(trial.trial_id, outcome, "stopped early by ASHA" if outcome == Outcome.STOPPED else "")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Print the failure; the run ends FAILED."""
        with self.view.lock:
            self.view.board.trial_ended(trial.trial_id, Outcome.FAILED, float("nan"), float("nan"))
        reason = failure_reason(trial.error_file)
        where = trial.error_file or trial.local_path or "the Tune logs"
        self._print(f"error {trial.trial_id} ({self._ended()}/{self.trials}): {reason}; details in {where}")
        self._close(trial.trial_id, Outcome.FAILED, reason)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """A failed trial is retried from its last checkpoint."""
        self._print(f"retry {trial.trial_id}: restarting from its last checkpoint")

    def _close(self, trial_id: str, outcome: Outcome, reason: str) -> None:
        if self.offline:
            return
        try:
            run_id = tracking.find_trial_run(self.client, self.experiment_id, self.parent_run_id, trial_id)
            if run_id is not None and tracking.get_run(self.client, run_id).info.status in ACTIVE_STATUSES:
                tracking.end_run(self.client, run_id, outcome, reason)
        except Exception as exc:  # never let bookkeeping kill the search; the driver re-checks at the end
            self.offline = True
            why = tracking.redact_uri(tracking.first_line(exc))
            self._print(f"warning: MLflow does not answer ({why}); runs are reconciled at the end")

    def _within_limits(self, result: dict[str, Any]) -> bool:
        """Whether the in-search costs of `result` are within the hard limits (the end re-checks latency)."""
        return all(excess <= 0 for excess in limit_excess(result, self.__dict__.get("limits", {})).values())

    def _ended(self) -> int:
        return sum(self.view.board.outcomes.values())

    def _print(self, text: str) -> None:
        self.view.note(f"[{time.perf_counter() - self.started_at:7.1f} s] {text}")


def _outcome(result: dict[str, Any]) -> Outcome:
    """How a trial that Tune ended (not by an error) ended, from its last result."""
    if result.get(ResultKey.DIVERGED):
        return Outcome.DIVERGED
    if result.get(ResultKey.COMPLETE):
        return Outcome.COMPLETED
    return Outcome.STOPPED
