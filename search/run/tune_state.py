"""The driver's reading of Tune's saved state: which trials it holds, which have not ended, and the MLflow
runs to close when the driver stops with trials open."""

from __future__ import annotations

import sys
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from search.record import tracking
from search.record.records import SearchRecord, tune_analysis, tune_state_saved
from search.spec.schema import ACTIVE_STATUSES, Outcome, RunStatus, Tag

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial


def close_leftover_runs(client: MlflowClient, record: SearchRecord, status: RunStatus) -> None:
    """No child run stays RUNNING once the driver stops: interrupted ones are KILLED (resume reopens them).

    A trial Tune stopped while it shut down after Ctrl-C ended its own run as "stopped" (Tune stops it as
    ASHA does, by raising SystemExit in `tune.report`); Tune's saved state still holds it unfinished, to run
    on at `--resume`, so its run is relabelled interrupted too.
    """
    unfinished = unfinished_trials(record.path) if status == RunStatus.KILLED else set()
    for run in tracking.trial_runs(client, record.experiment_id, record.parent_run_id):
        stopped_by_shutdown = (run.data.tags.get(Tag.OUTCOME) == Outcome.STOPPED
                               and run.data.tags.get(Tag.TRIAL_ID) in unfinished)  # fmt: skip
        if run.info.status in ACTIVE_STATUSES or stopped_by_shutdown:
            reason = f"search ended ({status}) with the trial open"
            tracking.end_run(client, run.info.run_id, Outcome.INTERRUPTED, reason)


def saved_trials(path: str) -> list[Trial] | None:
    """The trials in Tune's saved state of the search in `path`; None when Tune saved none (or it is unreadable)."""
    if not tune_state_saved(path):
        return None
    try:
        return list(tune_analysis(path).trials)
    except (OSError, ValueError) as exc:  # a state Tune was writing when the driver stopped
        print(f"warning: cannot read Tune's saved state: {tracking.first_line(exc)}", file=sys.stderr)
        return None


def unfinished_trials(path: str, errored: Collection[str] = ()) -> set[str]:
    """Ids of the trials Tune's saved state holds as not yet ended (to run on at resume); empty when none saved.

    Tune catches the first SIGINT itself: it stops the running trials, saves the experiment one last time
    and returns from `fit` as if the search were done. Its interrupt flag is local to `tune.run` and its
    ResultGrid then counts the stopped trials as terminated; only the saved state still holds them
    unfinished (PENDING), as `--resume` will see them. At a normal end every saved trial has ended.

    `errored` names the folders of trials `fit` returned with an error: a trial whose worker process died
    (killed for memory, SIGKILL) with no retries left is an error in the ResultGrid but can still be PENDING
    in the saved state when `fit` returns (Ray 2.60, measured): it has ended, it is not an interrupt.
    """
    from ray.tune.experiment import Trial

    trials = saved_trials(path) or []
    ended = (Trial.TERMINATED, Trial.ERROR)
    return {t.trial_id for t in trials if t.status not in ended and Path(t.path or "").name not in errored}
