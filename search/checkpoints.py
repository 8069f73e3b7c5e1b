"""Trial checkpoints that storage no longer holds: find the one to continue from instead.

Why a checkpoint named in Tune's saved state can be gone (Ray 2.60; reproduced by killing the driver
just after a trial's second checkpoint appeared):

1. The trial persists checkpoint N+1 to storage, then reports it (`ray/train/_internal/session.py`,
   `_TrainSession.report`: `persist_current_checkpoint` before the result reaches the driver).
2. The driver handles the report: `TuneController._process_trial_save` -> `Trial.on_checkpoint` ->
   `_CheckpointManager.register_checkpoint` (`ray/train/_internal/checkpoint_manager.py`), which at
   once deletes every checkpoint beyond `CheckpointConfig(num_to_keep)`: `_delete_fs_path(...)` of N.
3. Only at the end of that `TuneController.step` does `self.checkpoint()` write the experiment state
   that names N+1 (`save_to_dir`), into the driver's staging folder; `_ExperimentCheckpointManager.
   sync_up_experiment_state` (`ray/tune/execution/experiment_state.py`) then copies it to storage in a
   background thread, and skips the copy while the previous one still runs. The sync that
   `on_trial_checkpoint` forces after num_to_keep checkpoints comes after the deletion that made it due.

A kill between 2 and the end of 3 leaves a state on storage that names the deleted N. `Tuner.restore`
then fails the trial in `Trainable.restore` ("Could not recover from checkpoint as it does not exist
on storage anymore", `ray/tune/trainable/trainable.py`) on every retry, and anything reading that
checkpoint (`precrop reconcile`) finds no files. No finite `num_to_keep` closes the window, and None
keeps every checkpoint of every trial. So the search keeps one, and every reader copes with its loss:
`read_checkpoint` (search/trial.py) falls back to the newest readable checkpoint beside the missing one
(N+1 always exists: the driver deletes N only after N+1 was persisted), and before Tune restores a trial
the driver's callback (search/progress.py) points Tune at that same checkpoint, or at none, so the trial
starts over in its own MLflow run, instead of failing.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from ray import tune

T = TypeVar("T")
logger = logging.getLogger(__name__)
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")
# Tune trial states in which the trial is (re)started from its latest checkpoint
WILL_RESTORE = ("PENDING", "PAUSED")


def exists(checkpoint: tune.Checkpoint) -> bool:
    """Whether storage still holds the checkpoint's directory."""
    import pyarrow.fs

    return bool(_filesystem(checkpoint).get_file_info(checkpoint.path).type != pyarrow.fs.FileType.NotFound)


def _filesystem(checkpoint: tune.Checkpoint) -> Any:
    """The checkpoint's pyarrow filesystem (Ray sets it from the path when none is given)."""
    import pyarrow.fs

    return checkpoint.filesystem or pyarrow.fs.LocalFileSystem()


def checkpoint_index(checkpoint: tune.Checkpoint) -> int | None:
    """N of a `checkpoint_N` directory (None for another name)."""
    match = CHECKPOINT_NAME.fullmatch(checkpoint.path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def siblings(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The other `checkpoint_N` directories of the same trial directory, newest first."""
    import pyarrow.fs

    fs = _filesystem(checkpoint)
    folder = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    entries = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    found = [(int(m.group(1)), e.path) for e in entries
             if e.type == pyarrow.fs.FileType.Directory and (m := CHECKPOINT_NAME.fullmatch(e.base_name))]  # fmt: skip
    mine = checkpoint.path.rstrip("/")
    return [tune.Checkpoint(path, filesystem=fs) for _, path in sorted(found, reverse=True) if path != mine]


def usable(
    checkpoint: tune.Checkpoint, read: Callable[[tune.Checkpoint], T | None]
) -> tuple[tune.Checkpoint, T] | None:
    """`checkpoint` and what `read` makes of it; if storage no longer holds it, or its files cannot be read,
    the newest readable checkpoint of the same trial instead (one cut short by a kill while it was being
    written is skipped the same way); None when there is none."""
    candidates = [checkpoint] if exists(checkpoint) else []
    for candidate in [*candidates, *siblings(checkpoint)]:
        try:
            content = read(candidate)
        except Exception as exc:  # an unreadable checkpoint is no checkpoint to continue from
            logger.warning("skipping checkpoint %s: %s: %s", candidate.path, type(exc).__name__, exc)
            continue
        if content is not None:
            return candidate, content
    return None


def repair_trial(trial: Any) -> str | None:
    """If storage no longer holds the checkpoint Tune would restore `trial` from, point Tune at the one
    `read_checkpoint` falls back to (or at none: the trial starts over, in its own MLflow run).

    Returns what was done, or None when nothing was needed. Works on Tune's checkpoint bookkeeping of the
    trial (`run_metadata.checkpoint_manager`, Ray 2.60) in the driver, before the trial starts.
    """
    from search.trial import read_checkpoint_dir

    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    if latest is None or latest.checkpoint is None or exists(latest.checkpoint):
        return None
    gone = latest.checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
    found = usable(latest.checkpoint, read_checkpoint_dir)
    if found is None:
        manager._checkpoint_results = []
        manager._latest_checkpoint_result = None
        _changed(trial)
        return f"{trial.trial_id}: its checkpoint {gone} is gone from storage and no other is readable; it starts over"
    checkpoint, resume = found
    replacement = copy.copy(latest)
    replacement.checkpoint = checkpoint
    replacement.metrics = {**latest.metrics, **resumed_metrics(resume.state),
                           "checkpoint_dir_name": checkpoint.path.rstrip("/").rsplit("/", 1)[-1]}  # fmt: skip
    manager._checkpoint_results = [r for r in manager._checkpoint_results if r is not latest and exists(r.checkpoint)]
    manager._checkpoint_results.append(replacement)
    manager._latest_checkpoint_result = replacement
    index = checkpoint_index(checkpoint)
    if index is not None:  # the trial's next checkpoint goes after this one, never over it
        trial.storage.current_checkpoint_index = max(trial.storage.current_checkpoint_index, index)
    _changed(trial)
    name = replacement.metrics["checkpoint_dir_name"]
    return f"{trial.trial_id}: its checkpoint {gone} is gone from storage; it continues from {name}"


def _changed(trial: Any) -> None:
    """Tune caches a trial's saved form: the next experiment state must hold the repaired bookkeeping."""
    trial.invalidate_json_state()
    trial.run_metadata.invalidate_cache()


def resumed_metrics(state: dict[str, Any]) -> dict[str, Any]:
    """The Tune result a checkpoint of the training loop stands for: its last epoch's metrics, and one
    Tune iteration per epoch (a trial reports once per epoch)."""
    history = state.get("history") or [{}]
    epoch = int(state.get("epoch", 0))
    return {**history[-1], "epoch": epoch, "training_iteration": epoch}
