"""The private Ray and Tune APIs that search/infra/ray_private.py wraps still exist and behave as it uses them.

Each check names the private attribute it needs, so an upgrade of Ray that drops or changes one fails
here, loudly, instead of deep inside a search. No Ray cluster is started: the searcher and the trial are
the objects Tune itself builds, driven by hand.
"""

from __future__ import annotations

import collections
import inspect
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
from ray import tune

from search.infra import ray_private

WRITTEN_AGAINST = f"search/infra/ray_private.py was written against Ray {ray_private.RAY_VERSION_WRITTEN_AGAINST}"


def _require(owner: object, name: str, what: str) -> Any:
    """`owner.name`, or a failure naming the private attribute that this Ray no longer has."""
    assert hasattr(owner, name), f"Ray {ray.__version__} has no {what}.{name}; {WRITTEN_AGAINST}"
    return getattr(owner, name)


# --- the address of the cluster `ray start` began on this machine ---


def test_read_ray_address_reads_the_file_ray_start_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray._private.utils as ray_utils

    read = _require(ray_utils, "read_ray_address", "ray._private.utils")
    parameters = list(inspect.signature(read).parameters)
    assert parameters == ["temp_dir"], f"ray._private.utils.read_ray_address{parameters}; {WRITTEN_AGAINST}"
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # Ray's temp folder becomes tmp_path/ray
    assert ray_private.ray_start_address() is None, "read_ray_address found an address where no file is"
    (tmp_path / "ray").mkdir()
    address_file = tmp_path / "ray" / "ray_current_cluster"
    address_file.write_text("10.1.2.3:6379\n")
    assert ray_private.ray_start_address() == "10.1.2.3:6379", (
        f"ray._private.utils.read_ray_address no longer reads {address_file}; {WRITTEN_AGAINST}"
    )
    address_file.write_text("")
    assert ray_private.ray_start_address() is None


def test_the_cpus_of_an_embedded_ray_are_counted_as_ray_counts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray._private.utils as ray_utils

    _require(ray_utils, "get_num_cpus", "ray._private.utils")
    cpus = ray_private.embedded_ray_cpus()
    assert 1 <= cpus <= (os.cpu_count() or 1), f"{cpus} CPUs; {WRITTEN_AGAINST}"
    monkeypatch.setenv("RAY_USE_MULTIPROCESSING_CPU_COUNT", "1")  # any override Ray honours, it honours here too
    assert ray_private.embedded_ray_cpus() == float(ray_utils.get_num_cpus())


# --- OptunaSearch's study and its bookkeeping of told trials ---


def _searcher() -> Any:
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric=["val_acc", "macs"], mode=["max", "min"], seed=0)
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    return searcher


def test_optuna_search_keeps_its_study_trials_and_told_set_where_ray_private_reads_them() -> None:
    searcher = _searcher()
    for name in ("_ot_study", "_ot_trials", "_completed_trials"):
        _require(searcher, name, "OptunaSearch")
    assert searcher.suggest("a") is not None
    assert isinstance(searcher._ot_trials, dict) and isinstance(searcher._completed_trials, set), (
        f"OptunaSearch._ot_trials / _completed_trials changed type; {WRITTEN_AGAINST}"
    )
    study = ray_private.optuna_study(searcher)
    assert isinstance(study, optuna.Study), f"OptunaSearch._ot_study is not an optuna.Study; {WRITTEN_AGAINST}"
    trial = ray_private.untold_optuna_trial(searcher, "a")
    assert isinstance(trial, optuna.Trial), f"OptunaSearch._ot_trials['a'] is not an optuna.Trial; {WRITTEN_AGAINST}"
    assert [t.number for t in study.trials] == [trial.number], "the asked trial is not in OptunaSearch._ot_study"
    assert ray_private.untold_optuna_trial(searcher, "never-asked") is None

    study.tell(trial, [0.9, 10.0])
    ray_private.mark_told(searcher, "a")
    assert ray_private.untold_optuna_trial(searcher, "a") is None
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_ray_marks_a_completed_trial_in_the_set_ray_private_reads() -> None:
    """Ray's own completion hook records a told trial in `_completed_trials`, as `mark_told` does."""
    searcher = _searcher()
    searcher.suggest("b")
    searcher.on_trial_complete("b", {"val_acc": 0.8, "macs": 5.0})
    assert "b" in searcher._completed_trials, (
        f"OptunaSearch.on_trial_complete no longer records told trials in _completed_trials; {WRITTEN_AGAINST}"
    )
    assert ray_private.untold_optuna_trial(searcher, "b") is None


# --- a Tune trial's checkpoint bookkeeping ---


def _trial(storage_path: Path) -> Any:
    """A trial as Tune builds one (a stub: nothing runs), with its storage under `storage_path`."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(storage_path), experiment_dir_name="exp", trial_dir_name="trial_x")
    trial = Trial("run_trial", config={}, trial_id="x", storage=storage, stub=True,
                  placement_group_factory=PlacementGroupFactory([{"CPU": 1}]),
                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None))  # fmt: skip
    trial.create_placement_group_factory()
    return trial


def _report(trial: Any, folder: Path, index: int) -> Any:
    """Report `checkpoint_<index>` to the trial as the driver does when a trial saves one."""
    from ray.train._internal.session import _TrainingResult

    path = folder / f"checkpoint_{index:06d}"
    path.mkdir(parents=True)
    result = _TrainingResult(tune.Checkpoint(str(path)), {"epoch": index + 1, "training_iteration": index + 1})
    trial.on_checkpoint(result)
    return result


def _saved_and_restored(trial: Any) -> Any:
    """The trial as the next experiment state restores it (what Tune would run after a restart)."""
    from ray.tune.experiment import Trial

    state, metadata = trial.get_json_state()
    restored = Trial.from_json_state(state, stub=True)
    restored.restore_run_metadata(metadata)
    return restored


def test_the_checkpoint_manager_holds_the_results_ray_private_reads(tmp_path: Path) -> None:
    trial = _trial(tmp_path)
    metadata = _require(trial, "run_metadata", "Trial")
    manager = _require(metadata, "checkpoint_manager", "Trial.run_metadata")
    for name in ("_checkpoint_results", "_latest_checkpoint_result", "latest_checkpoint_result"):
        _require(manager, name, "ray.train._internal.checkpoint_manager._CheckpointManager")
    folder = tmp_path / "exp" / "trial_x"
    first, second = _report(trial, folder, 0), _report(trial, folder, 1)
    assert ray_private.latest_checkpoint_result(trial) is second, (
        f"_CheckpointManager.latest_checkpoint_result is not the last reported checkpoint; {WRITTEN_AGAINST}"
    )
    assert ray_private.checkpoint_results(trial) == [first, second], (
        f"_CheckpointManager._checkpoint_results does not hold the reported checkpoints; {WRITTEN_AGAINST}"
    )
    copied = ray_private.checkpoint_result(second, first.checkpoint, {"epoch": 1})
    assert (copied.checkpoint, copied.metrics) == (first.checkpoint, {"epoch": 1})
    assert second.checkpoint.path.endswith("checkpoint_000001")  # the original is left as it was


def test_setting_the_checkpoint_results_is_what_tune_restores_from(tmp_path: Path) -> None:
    trial = _trial(tmp_path)
    _require(trial, "invalidate_json_state", "Trial")
    _require(trial.run_metadata, "invalidate_cache", "Trial.run_metadata")
    folder = tmp_path / "exp" / "trial_x"
    first, _ = _report(trial, folder, 0), _report(trial, folder, 1)
    trial.get_json_state()  # cached now: setting the results must drop the cache
    ray_private.set_checkpoint_results(trial, [first], first)
    assert trial.checkpoint is not None and trial.checkpoint.path == first.checkpoint.path
    restored = _saved_and_restored(trial)
    assert restored.checkpoint is not None and restored.checkpoint.path == first.checkpoint.path, (
        f"the experiment state still names the old checkpoint: Trial.invalidate_json_state or "
        f"_TrainingRunMetadata.invalidate_cache no longer drop the cached state; {WRITTEN_AGAINST}"
    )
    ray_private.set_checkpoint_results(trial, [], None)
    assert trial.checkpoint is None and _saved_and_restored(trial).checkpoint is None


def test_the_checkpoint_index_names_the_next_checkpoint_and_survives_a_restore(tmp_path: Path) -> None:
    trial = _trial(tmp_path)
    storage = _require(trial, "storage", "Trial")
    _require(storage, "current_checkpoint_index", "ray.train._internal.storage.StorageContext")
    ray_private.raise_checkpoint_index(trial, 5)
    ray_private.raise_checkpoint_index(trial, 2)  # never lowered
    assert trial.storage.current_checkpoint_index == 5
    assert _saved_and_restored(trial).storage.current_checkpoint_index == 5, (
        f"StorageContext.current_checkpoint_index is not saved with the trial's state; {WRITTEN_AGAINST}"
    )
    trial.storage.current_checkpoint_index += 1  # what Ray Train does before it writes the next checkpoint
    assert trial.storage.checkpoint_dir_name == "checkpoint_000006", (
        f"StorageContext.current_checkpoint_index no longer names the next checkpoint_N; {WRITTEN_AGAINST}"
    )


def test_experiment_state_saved_finds_the_file_tune_resumes_from(tmp_path: Path) -> None:
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    assert _find_newest_experiment_checkpoint(str(tmp_path)) is None
    assert not ray_private.experiment_state_saved(str(tmp_path))
    (tmp_path / "tuner.pkl").write_bytes(b"")  # the tuner alone is not a state a search can resume from
    assert not ray_private.experiment_state_saved(str(tmp_path))
    state = tmp_path / "experiment_state-2026-11-30_06-00-00.json"
    state.write_text('{"trial_data": [], "runner_data": {}, "stats": {}}')
    assert _find_newest_experiment_checkpoint(str(tmp_path)) is not None
    assert ray_private.experiment_state_saved(str(tmp_path))
    # what a driver killed while Tune copied its state to storage leaves: Tune would restore no trials from it
    for truncated in ("", '{"trial_data": [["{\\"stub', "{}"):
        state.write_text(truncated)
        assert _find_newest_experiment_checkpoint(str(tmp_path)) is not None
        assert not ray_private.experiment_state_saved(str(tmp_path)), truncated


def test_a_searcher_state_cut_short_beside_a_whole_experiment_state_is_not_a_saved_state(tmp_path: Path) -> None:
    """Seen after a kill (test_kill_then_resume_keeps_one_finished_run_per_trial, 2026-12-07): a whole
    experiment state beside empty searcher files, from which Tune restored a searcher that never got its
    search space, and the resumed search failed at its first new trial."""
    import ray.cloudpickle as cloudpickle

    session = "2026-12-07_08-10-16"
    (tmp_path / f"experiment_state-{session}.json").write_text('{"trial_data": [], "runner_data": {}}')
    generator, searcher = tmp_path / f"search_gen_state-{session}.json", tmp_path / f"searcher-state-{session}.pkl"
    assert ray_private.experiment_state_saved(str(tmp_path))  # a grid search saves no searcher files
    generator.write_bytes(b"")
    searcher.write_bytes(b"")
    assert not ray_private.experiment_state_saved(str(tmp_path))
    whole = cloudpickle.dumps({"counter": 3, "total_samples": 4})  # Tune pickles both, whatever the suffix
    generator.write_bytes(whole)
    assert not ray_private.experiment_state_saved(str(tmp_path))  # the searcher's pickle is still empty
    searcher.write_bytes(cloudpickle.dumps({"_ot_trials": {}, "_space": {"lr": (0.01, 0.1)}}))
    assert ray_private.experiment_state_saved(str(tmp_path))
    generator.write_bytes(whole[: len(whole) // 2])  # cut short mid-copy
    assert not ray_private.experiment_state_saved(str(tmp_path))


def test_a_callback_state_cut_short_is_not_a_saved_state(tmp_path: Path) -> None:
    """Seen in CI (test_pareto_rungs_survive_a_kill_and_resume, 2026-12-07): the kill left the callbacks'
    file empty beside a whole experiment state; Tune's resume unpickles it and fails with EOFError."""
    import ray.cloudpickle as cloudpickle
    from ray.tune import Callback
    from ray.tune.callback import CallbackList

    session = "2026-12-07_18-10-16"
    (tmp_path / f"experiment_state-{session}.json").write_text('{"trial_data": [], "runner_data": {}}')
    callbacks = tmp_path / f"callback-states-{session}.pkl"
    callbacks.write_bytes(b"")
    with pytest.raises(EOFError):  # what Tune does with it (Ray 2.60): the reason for the check
        CallbackList([Callback()]).restore_from_dir(str(tmp_path))
    assert not ray_private.experiment_state_saved(str(tmp_path))
    callbacks.write_bytes(cloudpickle.dumps({0: {"pareto_asha": {"rungs": {"1": {"a": 0.5}}}}}))
    assert ray_private.experiment_state_saved(str(tmp_path))


def _write_state(folder: Path, session: str, trials: list[str], searcher: bytes) -> None:
    """An experiment state of `trials` (each with its trial folder) and its searcher files, as Tune saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"experiment_state-{session}.json").write_text('{"trial_data": [], "runner_data": {}}')
    for name in (f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl"):
        (folder / name).write_bytes(searcher)
    for trial in trials:
        (folder / trial).mkdir(exist_ok=True)


def test_a_state_cut_short_in_storage_is_restored_from_tunes_staging_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """Tune 2.60 keeps the state it copies to storage in the driver's staging folder (the layout below is
    `StorageContext.experiment_driver_staging_path`); only a copy of this very search is taken back."""
    import ray.cloudpickle as cloudpickle
    from ray.train._internal.storage import StorageContext

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    whole, session, trials = (
        cloudpickle.dumps({"counter": 2}),
        "2026-12-07_13-30-53",
        ["run_trial_a_1", "run_trial_b_2"],
    )
    storage = tmp_path / "ray_results" / "tiny-20261207-133052"
    _write_state(storage, session, trials, b"")  # the kill's leftovers: searcher files empty
    assert not ray_private.experiment_state_saved(str(storage))
    assert ray_private.restore_staged_experiment_state(str(storage)) is None  # no staging folder at all

    sessions = tmp_path / "tmp" / "ray"
    # the same name from a search under another storage root (its trial is not in this one), the newest
    other = sessions / "session_2" / "artifacts" / "2026-12-07_13-30-52" / storage.name / "driver_artifacts"
    _write_state(other, session, ["run_trial_c_1"], whole)
    cut = sessions / "session_3" / "artifacts" / "2026-12-07_13-30-52" / storage.name / "driver_artifacts"
    _write_state(cut, session, trials[:1], whole[:-3])  # this search's, but its own copy is cut short too
    assert ray_private.restore_staged_experiment_state(str(storage)) is None
    staged = sessions / "session_1" / "artifacts" / "2026-12-07_13-30-52" / storage.name / "driver_artifacts"
    _write_state(staged, session, trials, whole)
    for old, folder in enumerate((staged, cut, other)):  # the right one is the oldest
        os.utime(folder, (1_000_000 + old, 1_000_000 + old))
    assert ray_private.restore_staged_experiment_state(str(storage)) == str(staged)
    assert ray_private.experiment_state_saved(str(storage))
    assert (storage / f"searcher-state-{session}.pkl").read_bytes() == whole

    # the folder this Ray stages in has that layout: <session dir>/artifacts/<time>/<name>/driver_artifacts

    session_dir = sessions / "session_9"
    monkeypatch.setattr(
        ray._private.worker, "_global_node", type("Node", (), {"get_session_dir_path": lambda _: str(session_dir)})()
    )
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    staging = Path(StorageContext(str(tmp_path / "ray_results"), storage.name).experiment_driver_staging_path)
    assert staging.parent.parent.parent == session_dir / "artifacts", f"Tune stages in {staging}; {WRITTEN_AGAINST}"
    assert staging.parts[-2:] == (storage.name, "driver_artifacts"), f"Tune stages in {staging}; {WRITTEN_AGAINST}"


def test_a_requeued_optuna_trial_is_asked_again_with_its_parameters() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    first = study.ask()
    x = first.suggest_float("x", 0.0, 1.0)
    ray_private.requeue_optuna_trial(study, study.get_trials(deepcopy=False)[0])
    assert study.get_trials(deepcopy=False)[0].state == optuna.trial.TrialState.WAITING
    again = study.ask()
    assert again.number == first.number and again.suggest_float("x", 0.0, 1.0) == x


# --- no forced experiment snapshot after each trial checkpoint ---


def test_stopping_forced_snapshots_leaves_tune_to_its_period() -> None:
    from types import SimpleNamespace

    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    parameters = inspect.signature(_ExperimentCheckpointManager.__init__).parameters
    assert "sync_every_n_trial_checkpoints" in parameters, f"{list(parameters)}; {WRITTEN_AGAINST}"
    manager = _ExperimentCheckpointManager.__new__(_ExperimentCheckpointManager)  # no storage needed for this
    manager._sync_every_n_trial_checkpoints = 1  # what num_to_keep=1 sets
    manager._trial_num_checkpoints_since_last_sync = collections.Counter()
    manager._should_force_sync_up = False
    trial: Any = "a trial"  # only counted, by identity
    manager.on_trial_checkpoint(trial)
    assert manager._should_force_sync_up, f"Ray no longer forces snapshots after checkpoints; {WRITTEN_AGAINST}"
    manager._should_force_sync_up = False
    ray_private.stop_forced_experiment_snapshots(SimpleNamespace(_checkpoint_manager=manager))  # type: ignore[arg-type]
    manager.on_trial_checkpoint(trial)
    manager.on_trial_checkpoint(trial)
    assert not manager._should_force_sync_up
