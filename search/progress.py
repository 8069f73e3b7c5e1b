"""A Tune callback in the driver: one progress line per trial event, and no child run left RUNNING.

A trial ends its own MLflow run, but a trial that Tune stops (ASHA) may have its worker torn down
before that last request gets out; this callback closes such runs from the driver as a backstop.
It also keeps Tune from restarting a trial from a checkpoint storage no longer holds (search/checkpoints.py).
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from search import tracking
from search.checkpoints import WILL_RESTORE, repair_trial
from search.searcher import COMPLETE_KEY, DIVERGED_KEY, TRACKING_LOST_KEY


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
        self._client: Any = None
        self.offline = False  # MLflow stopped answering: leave the runs to the reconciliation at the end
        self.lost_trials: set[str] = set()
        self.checked_checkpoints: set[tuple[str, str]] = set()  # (trial id, path) whose existence was checked

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (the Tuner saves its callbacks): drop the client."""
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        """The MLflow client, created on first use."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Before Tune (re)starts a trial from its latest checkpoint (resume, retry), make sure storage still
        holds it; else point Tune at the newest readable one (see search/checkpoints.py). Each checkpoint
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

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print what the trial will try."""
        c = trial.config
        self._print(
            f"start {trial.trial_id}: {c.get('allocator')} budget {c.get('budget', 0):.3f}, lr {c.get('lr', 0):.3g}, "
            f"wd {c.get('weight_decay', 0):.2g}, ls {c.get('label_smoothing', 0):.2f}, batch {c.get('batch_size')}"
        )

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        """Say so, once per trial, when a trial could no longer log to MLflow."""
        if result.get(TRACKING_LOST_KEY) and trial.trial_id not in self.lost_trials:
            self.lost_trials.add(trial.trial_id)
            self._print(f"warning: {trial.trial_id} cannot reach MLflow since epoch {int(result.get('epoch', 0))}; "
                        "it goes on training and Tune keeps its results for re-logging")  # fmt: skip

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print the outcome; close the run if the trial left it open."""
        result = trial.last_result or {}
        if result.get(DIVERGED_KEY):
            outcome, status = "diverged", "FAILED"
        elif result.get(COMPLETE_KEY):
            outcome, status = "completed", "FINISHED"
        else:
            outcome, status = "stopped", "KILLED"
        self.finished += 1
        epoch = int(result.get("epoch", 0))
        self._print(
            f"done  {trial.trial_id} ({self.finished}/{self.trials}): {outcome} after epoch {epoch}, "
            f"val {result.get('val_acc', float('nan')):.2%}, {self.cost} {result.get(self.cost, float('nan')):,.4g}"
        )
        self._close(trial.trial_id, status, outcome, "stopped early by ASHA" if outcome == "stopped" else "")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print the failure; the run ends FAILED."""
        self.finished += 1
        self._print(
            f"error {trial.trial_id} ({self.finished}/{self.trials}): see {trial.local_path or 'the Tune logs'}"
        )
        self._close(trial.trial_id, "FAILED", "failed", "the trial raised an error (retries exhausted)")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A failed trial is retried from its last checkpoint."""
        self._print(f"retry {trial.trial_id}: restarting from its last checkpoint")

    def _close(self, trial_id: str, status: str, outcome: str, reason: str) -> None:
        if self.offline:
            return
        try:
            run_id = tracking.find_trial_run(self.client, self.experiment_id, self.parent_run_id, trial_id)
            if run_id is not None and self.client.get_run(run_id).info.status in tracking.ACTIVE:
                tracking.end_run(self.client, run_id, status, outcome, reason)
        except Exception as exc:  # never let bookkeeping kill the search; the driver re-checks at the end
            self.offline = True
            why = tracking.redact_uri(tracking.first_line(exc))
            self._print(f"warning: MLflow does not answer ({why}); runs are reconciled at the end")

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started_at:7.1f} s] {text}", flush=True)
