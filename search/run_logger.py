"""A trial's MLflow child run, logged so that losing the tracking server never stops training.

Every request goes through `RunLogger.call`. The first one that fails (server gone, database locked
for good) switches the logger off for the rest of the attempt: training goes on, Tune keeps every
result and checkpoint, and the driver (or `precrop reconcile` once the server is back) re-logs what
the run missed from them. Retrying each request would stall every epoch for MLflow's back-off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from search import tracking

T = TypeVar("T")


class RunLogger:
    """MLflow calls for one run; after the first failure they are skipped and `lost` says why."""

    def __init__(self, client: Any, run_id: str | None = None, strict: bool = False) -> None:
        self.client = client
        self.run_id = run_id
        self.strict = strict  # raise instead of going offline (reconciliation needs the server)
        self.lost = ""

    @property
    def online(self) -> bool:
        """Whether requests are still sent (the server has answered every one so far)."""
        return not self.lost and self.run_id is not None

    def call(self, what: str, request: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`request(client, run_id, *args)`, or None (and the logger goes offline) when it fails."""
        if not self.online:
            return None
        try:
            return request(self.client, self.run_id, *args, **kwargs)
        except tracking.TRACKING_FAILURES as exc:
            if self.strict:
                raise
            self.lost = f"{what}: {tracking.redact_uri(tracking.first_line(exc))}"
            return None

    def open(self, experiment: str, parent_id: str, trial_id: str, name: str, known: str | None = None) -> bool:
        """Continue the trial's earlier run (`known`, from its checkpoint, else found by its trial-id tag)
        or create it; True when it was created now."""
        try:
            found = known or tracking.find_trial_run(self.client, experiment, parent_id, trial_id)
            if found is not None:
                tracking.reopen_run(self.client, found)
                self.run_id = found
                return False
            self.run_id = tracking.create_trial_run(self.client, experiment, parent_id, trial_id, name)
            return True
        except tracking.TRACKING_FAILURES as exc:
            self.lost = f"opening the run: {tracking.redact_uri(tracking.first_line(exc))}"
            return False
