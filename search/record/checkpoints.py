"""Trial checkpoints: what one holds, and, when storage no longer holds it, the one to continue from instead.

A checkpoint of a trial is the training loop's state, the plan, and `trial.json` (the trial's MLflow run
id and its measured latency), written at most every `ray.checkpoint_every_s` seconds and at the last epoch.

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
`read_checkpoint` (below) falls back to the newest readable checkpoint beside the missing one
(N+1 always exists: the driver deletes N only after N+1 was persisted), and before Tune restores a trial
the driver's callback (search/run/progress.py) points Tune at that same checkpoint, or at none, so the trial
starts over in its own MLflow run, instead of failing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ray import train

from precrop.width.plan import WidthPlan
from search.infra import ray_private
from search.spec.schema import ResultKey
from trainers.checkpoint import PLAN_FILE, load_train_state, save_train_state
from trainers.loop import TrainState

if TYPE_CHECKING:
    import pyarrow.fs
    from ray.tune.experiment import Trial

T = TypeVar("T")
logger = logging.getLogger(__name__)
META_FILE = "trial.json"
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")
# Tune trial states in which the trial is (re)started from its latest checkpoint
WILL_RESTORE = ("PENDING", "PAUSED")


def exists(checkpoint: train.Checkpoint) -> bool:
    """Whether storage still holds the checkpoint's directory."""
    import pyarrow.fs

    return bool(_filesystem(checkpoint).get_file_info(checkpoint.path).type != pyarrow.fs.FileType.NotFound)


def _filesystem(checkpoint: train.Checkpoint) -> pyarrow.fs.FileSystem:
    """The checkpoint's pyarrow filesystem (Ray sets it from the path when none is given)."""
    import pyarrow.fs

    return checkpoint.filesystem or pyarrow.fs.LocalFileSystem()


def checkpoint_index(checkpoint: train.Checkpoint) -> int | None:
    """N of a `checkpoint_N` directory (None for another name)."""
    match = CHECKPOINT_NAME.fullmatch(checkpoint.path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def siblings(checkpoint: train.Checkpoint) -> list[train.Checkpoint]:
    """The other `checkpoint_N` directories of the same trial directory, newest first."""
    import pyarrow.fs

    fs = _filesystem(checkpoint)
    folder = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    entries = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    found = [(int(m.group(1)), e.path) for e in entries
             if e.type == pyarrow.fs.FileType.Directory and (m := CHECKPOINT_NAME.fullmatch(e.base_name))]  # fmt: skip
    mine = checkpoint.path.rstrip("/")
    return [train.Checkpoint(path, filesystem=fs) for _, path in sorted(found, reverse=True) if path != mine]


def usable(
    checkpoint: train.Checkpoint, read: Callable[[train.Checkpoint], T | None]
) -> tuple[train.Checkpoint, T] | None:
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


def repair_trial(trial: Trial) -> str | None:
    """If storage no longer holds the checkpoint Tune would restore `trial` from, point Tune at the one
    `read_checkpoint` falls back to (or at none: the trial starts over, in its own MLflow run).

    Returns what was done, or None when nothing was needed. Works on Tune's checkpoint bookkeeping of the
    trial (through search/infra/ray_private.py) in the driver, before the trial starts.
    """
    latest = ray_private.latest_checkpoint_result(trial)
    if latest is None or latest.checkpoint is None or exists(latest.checkpoint):
        return None
    gone = latest.checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
    found = usable(latest.checkpoint, read_checkpoint_dir)
    if found is None:
        ray_private.set_checkpoint_results(trial, [], None)
        return f"{trial.trial_id}: its checkpoint {gone} is gone from storage and no other is readable; it starts over"
    checkpoint, resume = found
    name = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
    metrics = {**latest.metrics, **resumed_metrics(resume.state), ResultKey.CHECKPOINT_DIR_NAME: name}
    replacement = ray_private.checkpoint_result(latest, checkpoint, metrics)
    kept = [r for r in ray_private.checkpoint_results(trial)
            if r is not latest and r.checkpoint is not None and exists(r.checkpoint)]  # fmt: skip
    ray_private.set_checkpoint_results(trial, [*kept, replacement], replacement)
    index = checkpoint_index(checkpoint)
    if index is not None:  # the trial's next checkpoint goes after this one, never over it
        ray_private.raise_checkpoint_index(trial, index)
    return f"{trial.trial_id}: its checkpoint {gone} is gone from storage; it continues from {name}"


def resumed_metrics(state: TrainState) -> dict[str, Any]:
    """The Tune result a checkpoint of the training loop stands for: its last epoch's metrics, and one
    Tune iteration per epoch (a trial reports once per epoch)."""
    history = state.get("history") or [{}]
    epoch = int(state.get("epoch", 0))
    return {**history[-1], ResultKey.EPOCH: epoch, ResultKey.TRAINING_ITERATION: epoch}


@dataclass
class Resume:
    """What a checkpoint of a trial holds."""

    state: TrainState
    run_id: str | None
    latency_ms: float
    plan: WidthPlan | None = None  # absent from checkpoints written before plans were saved in them


def write_checkpoint_dir(
    folder: Path, state: TrainState, plan: WidthPlan, run_id: str | None, latency_ms: float
) -> None:
    """Write a trial checkpoint into `folder`: the loop state, the plan, the run id and the latency."""
    save_train_state(folder, state)
    (folder / PLAN_FILE).write_text(plan.to_json())
    (folder / META_FILE).write_text(json.dumps({"run_id": run_id, "latency_ms": latency_ms}))


def read_checkpoint(checkpoint: train.Checkpoint | None) -> Resume | None:
    """What a trial's checkpoint holds (None for none): loop state, run id, latency and plan.

    A checkpoint that storage no longer holds (Tune's saved state can name one it already deleted: see the
    module docstring) gives way to the newest readable checkpoint of the same trial; None if none is.
    """
    found = usable(checkpoint, read_checkpoint_dir) if checkpoint is not None else None
    return found[1] if found else None


def read_checkpoint_dir(checkpoint: train.Checkpoint) -> Resume | None:
    """What this checkpoint directory holds (None without a loop state); raises when its files are unreadable."""
    with checkpoint.as_directory() as folder:
        root = Path(folder)
        state = load_train_state(root)
        meta = json.loads((root / META_FILE).read_text())
        plan = WidthPlan.from_json((root / PLAN_FILE).read_text()) if (root / PLAN_FILE).is_file() else None
    if state is None:
        return None
    run_id = meta.get("run_id")
    return Resume(state, str(run_id) if run_id else None, float(meta["latency_ms"]), plan)
