"""The only module that touches private Ray and Tune APIs (and Optuna's, for the study Tune's searcher holds):
each use is one small function here.

Written against Ray 2.60 (`ray[tune]`) and Optuna 5.0; tests/search/infra/test_ray_private.py fails, naming the
attribute, when an installed Ray no longer has one of them. Each function says why no public API serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    import pyarrow.fs
    from ray.train import Checkpoint
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial
    from ray.tune.search.optuna import OptunaSearch

RAY_VERSION_WRITTEN_AGAINST = "2.60"


def ray_start_address() -> str | None:
    """The GCS address of the cluster `ray start` began on this machine, or None.

    `ray._private.utils.read_ray_address` (Ray 2.60) reads the file `ray start` writes into Ray's temp
    folder; `ray.init(address="auto")` reads it too, but then joins the cluster (and hangs on a stale
    address) instead of telling the caller where it is. No public API returns it.
    """
    import ray._private.utils as ray_utils  # looked up at call time: tests replace the function

    found: str | None = ray_utils.read_ray_address()
    return found or None


def no_idle_worker_prestart() -> dict[str, object]:
    """Ray's `_system_config` for an embedded Ray that starts no idle Python workers ahead of demand.

    By default the raylet starts one idle worker per CPU when the driver connects (Ray 2.60's
    `prestart_worker_first_driver`, `enable_worker_prestart`). Tune never uses them: its trial actors carry
    a runtime_env of their own (ray/tune/execution/class_cache.py), so each gets a new worker anyway, and
    every idle one costs about a CPU-second of imports per search. `ray.init` exposes no public setting.
    A Ray that no longer knows one of these names refuses to start ("Received unexpected config
    parameter"), so every test that runs an embedded search checks them.
    """
    return {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


def embedded_ray_cpus() -> float:
    """The CPUs an embedded Ray on this machine will offer: Ray 2.60's `ray._private.utils.get_num_cpus`, which
    honours container CPU limits (cgroups) that `os.cpu_count()` ignores. Asked before Ray starts, so a
    search that cannot fit is refused before anything is written; no public API answers without starting Ray."""
    import ray._private.utils as ray_utils

    return float(ray_utils.get_num_cpus())


def experiment_state_saved(path: str) -> bool:
    """Whether Tune saved a readable experiment state (its trials, searcher and callbacks) in the experiment
    folder `path` (local or a URI), as `TuneController.resume` looks for one: Ray 2.60's
    `_find_newest_experiment_checkpoint`. `Tuner.can_restore` answers for tuner.pkl only.

    Readable matters: Tune 2.60 writes the state with a plain `open("w")` into a staging folder and then
    copies it to storage, so a driver killed during that copy leaves a truncated file (seen: 0 bytes) that
    Tune would restore as an experiment without trials. The searcher's files of the same save
    (`search_gen_state-<session>.json`, `searcher-state-<session>.pkl`) are copied the same way; seen empty
    beside a whole experiment state, Tune restored a searcher that never got its search space (Optuna's
    study is None), and the resumed search failed at its first new trial. Both must be whole too, and so
    must the callbacks' file (`callback-states-<session>.pkl`, the Pareto scheduler's rungs).
    """
    import json

    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    from search.infra.storage import storage_filesystem

    newest = _find_newest_experiment_checkpoint(path)
    if newest is None:
        return False
    try:
        fs, inner = storage_filesystem(newest)
        with fs.open_input_stream(inner) as stream:
            state = json.loads(stream.readall().decode())
        if not (isinstance(state, dict) and isinstance(state.get("trial_data"), list)):
            return False
        return _session_files_whole(fs, inner)
    except (OSError, ValueError):
        return False


def restore_staged_experiment_state(path: str) -> str | None:
    """Copy Tune's last whole experiment state of the search in `path` back from the driver's staging folder;
    the folder it came from, or None when no staging folder holds one.

    Tune 2.60 saves the experiment state (trials, searcher, callbacks) into a staging folder on the driver's
    machine (`StorageContext.experiment_driver_staging_path`: `<ray temp>/session_*/artifacts/<time>/<name>/
    driver_artifacts`) and copies it to storage afterwards; a driver killed during that copy leaves
    truncated files in storage beside whole ones in staging, which a resumed search would otherwise have
    to ignore (and retrain every finished trial). A staging folder counts only when it names trials and
    every trial folder it names is in `path` too (searches of the same name may have run under other
    storage roots).
    """
    import pyarrow.fs
    from ray._common.utils import get_default_ray_temp_dir
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    from search.infra.storage import storage_filesystem

    fs, inner = storage_filesystem(path)
    stored = {info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(inner, allow_not_found=True))}
    name = inner.rstrip("/").rsplit("/", 1)[-1]
    staged = Path(get_default_ray_temp_dir()).glob(f"session_*/artifacts/*/{name}/driver_artifacts")
    for folder in sorted(staged, key=lambda f: f.stat().st_mtime, reverse=True):
        trials = {p.name for p in folder.iterdir() if p.is_dir()}
        newest = _find_newest_experiment_checkpoint(str(folder))
        if newest is None or not trials or not trials <= stored or not experiment_state_saved(str(folder)):
            continue
        session = Path(newest).name.removeprefix("experiment_state-").removesuffix(".json")
        for file in folder.glob(f"*-{session}.*"):
            with fs.open_output_stream(f"{inner}/{file.name}") as out:
                out.write(file.read_bytes())
        return str(folder)
    return None


def _session_files_whole(fs: pyarrow.fs.FileSystem, state_path: str) -> bool:
    """Whether the searcher and callback files saved with the experiment state `state_path` are absent (a
    grid has no searcher; without a stateful callback Tune writes no callback file) or whole pickles
    (Tune's `_atomic_save` writes them all with cloudpickle, .json name or not). Tune unpickles the newest
    callback file on resume (`CallbackList.restore_from_dir`): one cut short fails the resume (EOFError)."""
    import pyarrow.fs

    folder, name = state_path.rsplit("/", 1)
    session = name.removeprefix("experiment_state-").removesuffix(".json")
    names = (f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl", f"callback-states-{session}.pkl")
    for file in names:
        info = fs.get_file_info(f"{folder}/{file}")
        if info.type == pyarrow.fs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                if not _whole_pickle(stream.readall()):
                    return False
    return True


def _whole_pickle(data: bytes) -> bool:
    """Whether `data` is one complete pickle, checked by walking its opcodes to STOP (nothing is built)."""
    import pickletools

    try:
        return bool(data) and [op.name for op, _, _ in pickletools.genops(data)][-1] == "STOP"
    except (ValueError, EOFError, IndexError):
        return False


def optuna_study(searcher: OptunaSearch) -> optuna.Study:
    """The Optuna study behind Ray's `OptunaSearch` (its private `_ot_study`, Ray 2.60).

    A searcher that tells Optuna more than Ray does (a constraint, a FAIL state) must call
    `study.tell` itself; `OptunaSearch` offers no accessor for its study.
    """
    study: optuna.Study | None = searcher._ot_study
    assert study is not None, "OptunaSearch has no study yet: it is created when the search space is set"
    return study


def untold_optuna_trial(searcher: OptunaSearch, trial_id: str) -> optuna.Trial | None:
    """The Optuna trial `searcher` asked for Tune trial `trial_id`, unless Optuna was already told how it
    ended (or it was never asked): None then. Reads `_ot_trials` and `_completed_trials` (Ray 2.60),
    the bookkeeping `OptunaSearch.on_trial_complete` keeps and exposes no other way."""
    if trial_id in searcher._completed_trials or trial_id not in searcher._ot_trials:
        return None
    trial: optuna.Trial = searcher._ot_trials[trial_id]
    return trial


def optuna_trials(searcher: OptunaSearch) -> Mapping[str, optuna.Trial]:
    """Tune trial id -> the Optuna trial `searcher` asked for it, told or not (`_ot_trials`, Ray 2.60): a
    read-only view of the bookkeeping `OptunaSearch` keeps and exposes no other way."""
    return MappingProxyType(searcher._ot_trials)


def mark_told(searcher: OptunaSearch, trial_id: str) -> None:
    """Record that Optuna was told how `trial_id` ended, as `OptunaSearch.on_trial_complete` does
    (`_completed_trials`, Ray 2.60), so a second completion of the trial is ignored."""
    searcher._completed_trials.add(trial_id)


def latest_checkpoint_result(trial: Trial) -> _TrainingResult | None:
    """The (checkpoint, metrics) Tune would restore `trial` from: its checkpoint manager's latest result.

    Reads `trial.run_metadata.checkpoint_manager` (Ray 2.60). `Trial.latest_checkpoint_result` also
    answers with the checkpoint of `tune.run(restore=...)`, which is not the trial's own bookkeeping.
    """
    manager = trial.run_metadata.checkpoint_manager
    return None if manager is None else manager.latest_checkpoint_result


def checkpoint_results(trial: Trial) -> list[_TrainingResult]:
    """Every checkpoint result Tune keeps for `trial` (the manager's `_checkpoint_results`, Ray 2.60)."""
    return list(_manager(trial)._checkpoint_results)


def set_checkpoint_results(trial: Trial, results: list[_TrainingResult], latest: _TrainingResult | None) -> None:
    """Make Tune keep `results` for `trial` and restore it from `latest` (None: from no checkpoint, so
    the trial starts over), and make the next experiment state save that.

    Sets the manager's `_checkpoint_results` and `_latest_checkpoint_result` and drops the trial's cached
    JSON state (Ray 2.60). Tune has no API to point a trial at another checkpoint: a checkpoint it
    already deleted (search/record/checkpoints.py) would otherwise fail every retry of the trial.
    """
    manager = _manager(trial)
    manager._checkpoint_results = list(results)
    manager._latest_checkpoint_result = latest
    _invalidate(trial)


def checkpoint_result(like: _TrainingResult, checkpoint: Checkpoint, metrics: dict[str, object]) -> _TrainingResult:
    """A copy of the checkpoint result `like` for another checkpoint and metrics (`_TrainingResult` is
    private to Ray Train, Ray 2.60; copying keeps whatever else it carries)."""
    import copy

    result = copy.copy(like)
    result.checkpoint = checkpoint
    result.metrics = metrics
    return result


def raise_checkpoint_index(trial: Trial, index: int) -> None:
    """Make the trial's next checkpoint be written after `checkpoint_<index>`, never over it.

    Sets `trial.storage.current_checkpoint_index` (Ray Train's private StorageContext, Ray 2.60), the
    counter that names the next `checkpoint_N`; Tune sets it only from its own saved state.
    """
    storage = trial.storage
    assert storage is not None, f"trial {trial.trial_id} has no storage context"
    storage.current_checkpoint_index = max(storage.current_checkpoint_index, index)
    _invalidate(trial)


def _manager(trial: Trial) -> _CheckpointManager:
    """The trial's checkpoint manager (Tune creates it with the trial)."""
    manager = trial.run_metadata.checkpoint_manager
    assert manager is not None, f"trial {trial.trial_id} has no checkpoint manager"
    return manager


def _invalidate(trial: Trial) -> None:
    """Tune caches a trial's saved form: the next experiment state must hold the changed bookkeeping."""
    trial.invalidate_json_state()
    trial.run_metadata.invalidate_cache()


def stop_forced_experiment_snapshots(tune_controller: TuneController) -> None:
    """Let Tune save its experiment state on its own period only, not after every trial checkpoint.

    Ray 2.60 forces a full experiment snapshot, and waits for its upload, whenever a trial has checkpointed
    `CheckpointConfig.num_to_keep` times since the last one (`_ExperimentCheckpointManager.
    on_trial_checkpoint`), so that the state never names a checkpoint Ray already deleted. With num_to_keep=1
    that is every checkpoint of every trial, and the snapshot holds every trial: a search of n trials writes
    O(n^2) (profiled at 600 trials: saving and syncing grew from 3.5% to 11% of the driver's time between the
    first and the last fifth). A resume copes with a state that names a deleted checkpoint anyway
    (search/record/checkpoints.py), so Tune's own period (at least 10 s, about 5% of the time) is enough.
    No public setting turns the forcing off short of keeping every checkpoint (num_to_keep=None).
    """
    tune_controller._checkpoint_manager._sync_every_n_trial_checkpoints = None


def requeue_optuna_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Put a RUNNING trial of `study` back in its queue (WAITING): the next `study.ask` hands it out again with
    the parameters it has. Optuna has no public call for this; its storages allow RUNNING -> WAITING (only a
    finished state is final), through the private `Study._storage` and `FrozenTrial._trial_id` (Optuna 5.0)."""
    from optuna.trial import TrialState

    study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
