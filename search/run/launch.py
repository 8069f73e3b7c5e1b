"""What differs between a new search, a resumed one and a study, behind one small interface the driver calls.

The driver (search/run/driver.py) does the same steps for all three: check the config, join Ray, open the
search's record, run the Tuner, summarize. Only three answers differ, and a `Launch` gives them:

- `before_ray`: what is checked before Ray starts (a resume finds the search to continue, and refuses a
  changed config; with none to continue it becomes a new search);
- `open_record`: the search's record and its MLflow parent run (a new run, or the old one reopened);
- `tuner`: Tune's Tuner (Optuna searcher and early stopping; Tune's own saved state; or a fixed grid).
"""

from __future__ import annotations

import dataclasses
import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.infra.ray_private import restore_staged_experiment_state
from search.record import tracking
from search.record.records import SearchRecord, optuna_study_name, tune_state_saved
from search.run.tune_state import saved_trials
from search.spec.config import ConfigError, ExperimentConfig
from search.spec.grid import Study
from search.spec.locations import storage_path_of
from search.spec.schema import Outcome, Tag

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

# keys that may differ between the original run and a resume
RESUME_MAY_DIFFER = ("ray.address", "search.progress_every_s")


class Launch(ABC):
    """One way to start the trials of a config: a new search, a resumed one, or a study's grid."""

    def __init__(self, config: ExperimentConfig, uri: str) -> None:
        self.config = config
        self.uri = uri

    @property
    def trials(self) -> int:
        """How many trials the Tuner runs in all."""
        return self.config.search.trials

    @property
    def what(self) -> str:
        """What is run, for messages: "search" or "<kind> study"."""
        return "search"

    def before_ray(self, client: MlflowClient, experiment: str) -> Launch:
        """Checks that need MLflow but not Ray; returns the launch to run (a resume with nothing to resume
        becomes a new search)."""
        return self

    @abstractmethod
    def open_record(self, client: MlflowClient, experiment: str) -> SearchRecord:
        """The search's record, its parent run open (called once Ray is up and has the resources)."""

    @abstractmethod
    def tuner(self, trainable: Any, record: SearchRecord, callbacks: list[tune.Callback]) -> tune.Tuner:
        """Tune's Tuner of these trials."""


class NewSearch(Launch):
    """A new multi-objective search: an Optuna searcher, early stopping, a new parent run."""

    def __init__(self, config: ExperimentConfig, uri: str) -> None:
        from search.run.searcher import storage_url

        super().__init__(config, uri)
        self.optuna_url = storage_url(config, uri)  # checks only, opens nothing

    def open_record(self, client: MlflowClient, experiment: str) -> SearchRecord:
        """A new name, Tune directory and parent run (tagged with where its Optuna study is stored)."""
        if self.optuna_url is not None:
            from search.run.searcher import open_storage

            open_storage(self.optuna_url)  # a database that cannot be opened leaves no parent run behind
        return new_record(client, self.config, experiment, self.uri, None, self.optuna_url)

    def tuner(self, trainable: Any, record: SearchRecord, callbacks: list[tune.Callback]) -> tune.Tuner:
        """Optuna samples the points; the config's early-stopping rule stops the poor ones."""
        return search_tuner(self.config, trainable, record, callbacks)


class ResumedSearch(Launch):
    """The latest search of the config, continued from Tune's saved state under its own parent run."""

    def __init__(self, config: ExperimentConfig, uri: str) -> None:
        super().__init__(config, uri)
        self.record: SearchRecord | None = None
        self.saved: list[Trial] | None = None  # None: Tune saved no readable state

    def before_ray(self, client: MlflowClient, experiment: str) -> Launch:
        """The search to resume (ConfigError when the config changed); a new search when there is none."""
        self.record = resumed_record(client, self.config, experiment, self.uri)
        if self.record is None:  # killed before its parent run existed, or never started: start it now
            print(f"note: no search of config {self.config.name!r} to resume in {tracking.redact_uri(self.uri)}: "
                  "starting a new one", flush=True)  # fmt: skip
            return NewSearch(self.config, self.uri)
        return self

    def open_record(self, client: MlflowClient, experiment: str) -> SearchRecord:
        """The found record, its parent run reopened and the runs of trials Tune never saved dropped."""
        assert self.record is not None, "before_ray finds the record"
        self.saved = saved_trials(self.record.path)
        tracking.reopen_run(client, self.record.parent_run_id)
        drop_runs_tune_forgot(client, self.record, {t.trial_id for t in self.saved or []})
        return self.record

    def tuner(self, trainable: Any, record: SearchRecord, callbacks: list[tune.Callback]) -> tune.Tuner:
        """Tune's saved Tuner (run config and callbacks included); without one the search starts over."""
        from ray import tune

        if self.saved is None:
            return search_tuner(self.config, trainable, record, callbacks)
        return tune.Tuner.restore(record.path, trainable=trainable, resume_errored=True)


class StudyGrid(Launch):
    """A study: a fixed grid of cells, every one trained to the end (no searcher, no early stopping)."""

    def __init__(self, config: ExperimentConfig, uri: str, study: Study) -> None:
        super().__init__(config, uri)
        self.study = study

    @property
    def trials(self) -> int:
        """Cells in the grid."""
        return self.study.trials

    @property
    def what(self) -> str:
        """The study's kind."""
        return f"{self.study.kind} study"

    def open_record(self, client: MlflowClient, experiment: str) -> SearchRecord:
        """A new parent run tagged with the study's kind; the record keeps the grid."""
        return new_record(client, self.config, experiment, self.uri, self.study)

    def tuner(self, trainable: Any, record: SearchRecord, callbacks: list[tune.Callback]) -> tune.Tuner:
        """Grid searches over the studied values, budgets and seeds, at one fixed recipe."""
        from ray import tune

        from search.studies.study import study_space

        concurrency = self.config.search.concurrency
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True)
        return tune.Tuner(trainable, param_space=study_space(self.config, self.study), tune_config=tune_config,
                          run_config=run_config(self.config, record, callbacks))  # fmt: skip


def choose_launch(config: ExperimentConfig, uri: str, resume: bool, study: Study | None) -> Launch:
    """The launch for `precrop search` (with --resume) or `precrop study` (studies start anew)."""
    if study is not None:
        return StudyGrid(config, uri, study)
    return ResumedSearch(config, uri) if resume else NewSearch(config, uri)


def run_config(config: ExperimentConfig, record: SearchRecord, callbacks: list[tune.Callback]) -> tune.RunConfig:
    """Where Tune keeps the search, its retries and checkpoints, and the driver's callbacks."""
    from ray import tune

    return tune.RunConfig(
        name=record.name, storage_path=record.path.rsplit("/", 1)[0], verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
        # one per trial: Tune's saved state may name one Ray already deleted, whatever num_to_keep is; a
        # resume copes (search/record/checkpoints.py)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )  # fmt: skip


def search_tuner(config: ExperimentConfig, trainable: Any, record: SearchRecord,
                 callbacks: list[tune.Callback]) -> tune.Tuner:  # fmt: skip
    """A Tuner whose points Optuna samples (stored where the record says) and whose trials ASHA may stop."""
    from ray import tune

    from search.run.scheduler import ParetoASHA, SchedulerStateKeeper
    from search.run.searcher import ParetoOptunaSearch, make_sampler, objectives, startup_trials
    from search.spec.space import initial_points, param_space

    scheduler = early_stopping(config)
    if isinstance(scheduler, ParetoASHA):
        callbacks = [*callbacks, SchedulerStateKeeper(scheduler)]  # Ray saves no scheduler state; this does
    metrics, modes = objectives(config)
    first = initial_points(config.space, startup_trials(config), config.search.seed)
    searcher = ParetoOptunaSearch(metric=metrics, mode=modes, sampler=make_sampler(config), points_to_evaluate=first,
                                  epochs=config.space.epochs, limits=config.constraints.limits(),
                                  **optuna_study(record))  # fmt: skip
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=config.search.trials,
                                  max_concurrent_trials=config.search.concurrency, reuse_actors=True)  # fmt: skip
    return tune.Tuner(trainable, param_space=param_space(config.space), tune_config=tune_config,
                      run_config=run_config(config, record, callbacks))  # fmt: skip


def optuna_study(record: SearchRecord) -> dict[str, Any]:
    """The searcher's study name, storage and attributes: stored where the record says, else in memory."""
    if record.optuna_storage is None or record.optuna_study is None:
        return {}
    from search.run.searcher import open_storage

    attrs = {Tag.SEARCH.value: record.name, Tag.PARENT.value: record.parent_run_id}  # what the dashboard shows
    return {"study_name": record.optuna_study, "storage": open_storage(record.optuna_storage), "study_attrs": attrs}


def early_stopping(config: ExperimentConfig) -> TrialScheduler:
    """The early-stopping rule `asha` asks for: Pareto-ranked rungs (default), Ray's ASHA on val_acc, or none."""
    from search.run.scheduler import AccuracyASHA, FifoScheduler, ParetoASHA
    from search.spec.schema import ResultKey

    asha = config.asha
    if not asha.enabled:
        return FifoScheduler()
    if asha.mode == "pareto":
        return ParetoASHA(config.objectives.cost, config.space.epochs, asha.grace_period, asha.reduction_factor)
    return AccuracyASHA(
        time_attr=ResultKey.TRAINING_ITERATION.value, metric=ResultKey.ACCURACY.value, mode="max",
        max_t=config.space.epochs, grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
    )  # fmt: skip


def new_record(
    client: MlflowClient, config: ExperimentConfig, experiment: str, uri: str, study: Study | None = None,
    optuna_storage: str | None = None,
) -> SearchRecord:  # fmt: skip
    """A new search: its name and Tune directory, and its parent run, opened now (tagged with where its
    Optuna study is stored, when it is)."""
    kind = f"-{study.kind}" if study else ""
    name = f"{config.name}{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    path = _storage_root(config) + "/" + name
    parent = tracking.open_parent_run(client, experiment, name, path, redacted(config), study.kind if study else None)
    study_name = None
    if optuna_storage is not None:
        study_name = optuna_study_name(name, parent)
        tracking.set_tags(client, parent, {Tag.OPTUNA_STORAGE: optuna_storage, Tag.OPTUNA_STUDY: study_name})
    return SearchRecord(name, path, uri, experiment, parent, config.to_dict(),
                        dataclasses.asdict(study) if study else None, optuna_storage, study_name)  # fmt: skip


def resumed_record(
    client: MlflowClient, config: ExperimentConfig, experiment: str, uri: str
) -> SearchRecord | None:  # fmt: skip
    """The latest search of `config`, to resume; None when there is none (ConfigError when the config changed)."""
    parent = tracking.latest_parent_run(client, experiment, {Tag.CONFIG_NAME: config.name})
    if parent is None:
        return None
    tags = parent.data.tags
    saved = tracking.flatten(json.loads(tags[Tag.CONFIG]))
    # a key the search's config did not have yet (added to precrop since) held its default
    defaults = tracking.flatten(ExperimentConfig().to_dict())
    changed = [k for k, v in tracking.flatten(redacted(config)).items()
               if k not in RESUME_MAY_DIFFER and saved.get(k, defaults.get(k)) != v]  # fmt: skip
    if changed:
        raise ConfigError(f"cannot resume {tags[Tag.SEARCH]}: the config changed ({', '.join(changed[:5])})")
    path = tags[Tag.SEARCH_DIR]
    _announce_resume(tags[Tag.SEARCH], path)
    # the study stays where the search began it (Tune restores the searcher, storage included)
    stored = tags.get(Tag.OPTUNA_STORAGE), tags.get(Tag.OPTUNA_STUDY)
    return SearchRecord(tags[Tag.SEARCH], path, uri, experiment, parent.info.run_id, config.to_dict(), None, *stored)


def _announce_resume(search: str, path: str) -> None:
    """Say where the resumed search continues from, first restoring Tune's state from its staging copy when
    a kill cut the copy in storage short; without any whole state, the trials start from the beginning."""
    if tune_state_saved(path):
        print(f"resuming search {search} from {path}", flush=True)
    elif (staged := restore_staged_experiment_state(path)) is not None and tune_state_saved(path):
        print(f"resuming search {search} from {path}: its Tune state there was cut short by the kill and is "
              f"restored from the driver's copy in {staged}", flush=True)  # fmt: skip
    else:
        # killed before Tune first saved its experiment state (trials, searcher), or while it copied it
        print(f"note: search {search} stopped before Tune saved a readable state in {path}: "
              "its trials start from the beginning, under the same parent run", flush=True)  # fmt: skip


def redacted(config: ExperimentConfig) -> dict[str, Any]:
    """The config as logged to MLflow: any password in a URI masked."""
    masked: dict[str, Any] = json.loads(tracking.redact_uri(json.dumps(config.to_dict())))
    return masked


def _storage_root(config: ExperimentConfig) -> str:
    root = storage_path_of(config)
    if "://" in root:
        return root.rstrip("/")
    return str(Path(root).expanduser().resolve())


def drop_runs_tune_forgot(client: MlflowClient, record: SearchRecord, known: set[str]) -> None:
    """Delete the search's trial runs whose trial Tune's saved state does not hold (`known`: the ids it
    does; empty when Tune saved nothing): a driver killed between a trial's start and Tune's next save
    leaves such a run behind, and the resumed Tune, which counts only the trials it saved, runs that many
    trials again under new ids. Kept, the run would stay RUNNING and be one trial too many. MLflow deletes
    softly: the note says how to restore it."""
    for run in tracking.trial_runs(client, record.experiment_id, record.parent_run_id):
        trial_id = run.data.tags.get(Tag.TRIAL_ID)
        if trial_id in known:
            continue
        reason = "the driver stopped before Tune saved this trial"
        tracking.delete_trial_run(client, run.info.run_id, Outcome.INTERRUPTED, reason)
        print(f"note: trial {trial_id} started after Tune's last save and runs again as a new trial; its run "
              f"{run.info.run_id} is deleted (`mlflow runs restore --run-id {run.info.run_id}` brings it back)",
              flush=True)  # fmt: skip
