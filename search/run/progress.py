"""A Tune callback in the driver: one progress line per trial event, and no child run left RUNNING.

A trial ends its own MLflow run, but a trial that Tune stops (ASHA) may have its worker torn down
before that last request gets out; this callback closes such runs from the driver as a backstop.
It also keeps Tune from restarting a trial from a checkpoint storage no longer holds (search/record/checkpoints.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from search.record import tracking
from search.record.checkpoints import WILL_RESTORE, repair_trial
from search.run.trial_errors import failure_reason
from search.spec.schema import ACTIVE_STATUSES, Outcome, ResultKey

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial


class ProgressAndRunCloser(Callback):
    """Prints trial starts and ends; ends a trial's MLflow run if the trial could not."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, trials: int, cost: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.trials = trials
        self.cost = cost
        self.finished = 0
        self.started_at = time.perf_counter()
        self._client: MlflowClient | None = None
        self.offline = False  # MLflow stopped answering: leave the runs to the reconciliation at the end
        self.lost_trials: set[str] = set()
        self.checked_checkpoints: set[tuple[str, str]] = set()  # (trial id, path) whose existence was checked

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (the Tuner saves its callbacks): drop the client."""
        state = self.__dict__.copy()
        state["_client"] = None
        return state

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

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Print what the trial will try."""
        c = trial.config
        self._print(
            f"start {trial.trial_id}: {c.get('allocator')} budget {c.get('budget', 0):.3f}, lr {c.get('lr', 0):.3g}, "
            f"wd {c.get('weight_decay', 0):.2g}, ls {c.get('label_smoothing', 0):.2f}, batch {c.get('batch_size')}"
        )

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        """Say so, once per trial, when a trial could no longer log to MLflow."""
        if result.get(ResultKey.TRACKING_LOST) and trial.trial_id not in self.lost_trials:
            self.lost_trials.add(trial.trial_id)
            epoch = int(result.get(ResultKey.EPOCH, 0))
            self._print(f"warning: {trial.trial_id} cannot reach MLflow since epoch {epoch}; "
                        "it goes on training and Tune keeps its results for re-logging")  # fmt: skip

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Print the outcome; close the run if the trial left it open."""
        result = trial.last_result or {}
        if result.get(ResultKey.DIVERGED):
            outcome = Outcome.DIVERGED
        elif result.get(ResultKey.COMPLETE):
            outcome = Outcome.COMPLETED
        else:
            outcome = Outcome.STOPPED
        self.finished += 1
        epoch = int(result.get(ResultKey.EPOCH, 0))
        accuracy, cost = result.get(ResultKey.ACCURACY, float("nan")), result.get(self.cost, float("nan"))
        self._print(f"done  {trial.trial_id} ({self.finished}/{self.trials}): {outcome} after epoch {epoch}, "
                    f"val {accuracy:.2%}, {self.cost} {cost:,.4g}")  # fmt: skip
        self._close(trial.trial_id, outcome, "stopped early by ASHA" if outcome == Outcome.STOPPED else "")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Print the failure; the run ends FAILED."""
        self.finished += 1
        reason = failure_reason(trial.error_file)
        where = trial.error_file or trial.local_path or "the Tune logs"
        self._print(f"error {trial.trial_id} ({self.finished}/{self.trials}): {reason}; details in {where}")
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

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started_at:7.1f} s] {text}", flush=True)
