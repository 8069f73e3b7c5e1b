"""The search driver: check the config, start (or join) Ray, run the Tuner, then summarize the front.

A search is named `<config name>-<UTC time>`; Tune keeps its state under `ray.storage_path/<search>`
and MLflow holds one parent run tagged with the same name. `--resume` finds the latest search of the
config in MLflow, restores the Tuner from its directory (searcher state included) and reopens the
parent run, so finished trials are not run again and interrupted ones continue their own child runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from precrop.errors import UserError
from search import tracking
from search.cluster import init_ray, trial_resources
from search.config import ConfigError, ExperimentConfig, storage_path_of, tracking_uri_of
from search.records import (
    SearchRecord,
    optuna_study_name,
    read_record,
    tune_analysis,
    tune_state_saved,
    write_record,
)
from search.schema import ACTIVE_STATUSES, Outcome, RunStatus, Tag
from search.study import Study
from search.summary import NOTHING_TRAINED, finish_search

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

# keys that may differ between the original run and a resume
RESUME_MAY_DIFFER = ("ray.address",)


def run_search(config: ExperimentConfig, resume: bool = False, study: Study | None = None) -> int:
    """Run (or resume) the search `config` describes; print the front; return the exit code.

    With `study`, the trials are that study's fixed grid instead of a search (see search/study.py),
    and the end prints the study's table instead of the front.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # one checkpoint per epoch of short trials is expected here, not a misconfiguration to warn about
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a reused actor waits this long for its previous trial's thread (an ASHA-stopped trial ends its
    # MLflow run on the way out; MLflow gives up on a lost server within about 10 s)
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "15")
    started = time.perf_counter()
    tracking.bound_http_retries()
    preflight(config, study)
    uri = tracking.resolve_tracking_uri(tracking_uri_of(config))
    optuna_url = _optuna_storage(config, uri) if study is None and not resume else None
    client = tracking.client_for(uri)
    experiment = tracking.experiment_id(client, config.experiment_name)
    if resume:
        found = _resumed_record(client, config, experiment, uri)
        if found is None:  # killed before its parent run existed, or never started: start it now
            print(f"note: no search of config {config.name!r} to resume in {tracking.redact_uri(uri)}: "
                  "starting a new one", flush=True)  # fmt: skip
            resume, optuna_url = False, _optuna_storage(config, uri) if study is None else None
        else:
            record = found
    # Ray is joined (and the resources checked) before a new search opens its parent run: a cluster
    # that cannot run it leaves nothing behind in MLflow
    ray_started = init_ray(config)
    try:
        resources = trial_resources(config, ray_started.embedded)
        saved = _saved_trials(record.path) if resume else None  # None: Tune saved no readable state
        if resume:
            tracking.reopen_run(client, record.parent_run_id)
            _drop_runs_tune_forgot(client, record, {t.trial_id for t in saved or []})
        else:
            if optuna_url is not None:
                from search.searcher import open_storage

                open_storage(optuna_url)  # a database that cannot be opened leaves no parent run behind
            record = _new_record(client, config, experiment, uri, study, optuna_url)
        write_record(record)
        _announce(config, record, study)
        restore = saved is not None  # see _resumed_record
        _run_tuner(config, record, resources, restore, study, client)
    finally:
        ray_started.shutdown()
    try:
        trained = finish_search(client, read_record(record.path), config, study)
    except BaseException as exc:
        failure = _finish_failed(client, record, uri, exc)
        if failure is exc:
            raise
        raise failure from exc
    print(f"search took {time.perf_counter() - started:.0f} s")
    print_ui_hint(record)
    if not trained:  # every trial failed (or diverged): the error lines above say why
        print(f"precrop: {NOTHING_TRAINED}: the error lines above say why each trial ended", file=sys.stderr)
        return 1
    return 0


def _announce(config: ExperimentConfig, record: SearchRecord, study: Study | None) -> None:
    trials = study.trials if study else config.search.trials
    what = f"{study.kind} study" if study else "search"
    print(f"{what} {record.name}: {trials} trials of {config.model.arch} on {config.data.name}; "
          f"MLflow experiment {config.experiment_name!r} (parent run {record.parent_run_id})", flush=True)  # fmt: skip
    if record.optuna_storage is not None:
        print(f"Optuna study {record.optuna_study} in {record.optuna_storage}", flush=True)
    elif study is None and config.search.optuna_storage == "auto":
        print("note: this search keeps its Optuna study in memory: set search.optuna_storage or "
              "$PRECROP_OPTUNA_STORAGE to a database to keep it for optuna-dashboard", flush=True)  # fmt: skip


def _optuna_storage(config: ExperimentConfig, tracking_uri: str) -> str | None:
    """Where a new search stores its Optuna study (search/searcher.py `storage_url`); checks only, opens nothing."""
    from search.searcher import storage_url

    return storage_url(config, tracking_uri)


def _finish_failed(client: MlflowClient, record: SearchRecord, uri: str, exc: BaseException) -> BaseException:
    """What to raise when the end of a search failed; the parent run does not stay RUNNING.

    MLflow's own failures name the server; a local file error (a path under the Tune directory that is
    gone, a disk that is full) names the path and is not blamed on MLflow. Either way Tune keeps every
    result, so `precrop reconcile` can finish the job later.
    """
    later = f"every trial's results are kept by Tune in {record.path}"
    if isinstance(exc, tracking.TRACKING_FAILURES) and not tracking.local_file_error(exc):
        why = tracking.redact_uri(tracking.first_line(exc))
        return tracking.TrackingError(
            f"MLflow at {tracking.redact_uri(uri)} stopped answering ({why}); {later}: once the server is back, "
            f"run `precrop reconcile {record.path}`"
        )  # fmt: skip
    reason = f"the search's end failed: {type(exc).__name__}: {tracking.first_line(exc)}"
    status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
    try:
        tracking.end_parent_run(client, record.parent_run_id, status, reason)
    except tracking.TRACKING_FAILURES as failed:
        print(f"warning: could not end the parent run: {tracking.first_line(failed)}", file=sys.stderr)
    if tracking.local_file_error(exc):
        return UserError(
            f"{tracking.describe_file_error(exc)} (a local file, not MLflow); {later}: once the path is back, "
            f"run `precrop reconcile {record.path}`"
        )  # fmt: skip
    return exc


def preflight(config: ExperimentConfig, study: Study | None = None) -> None:
    """Fail fast, before Ray starts: the data must load and every allocator must meet the budget range
    (or, for a study, every cell of its grid)."""
    from precrop.methods.registry import check_feasible
    from precrop.nn.build import layer_table
    from search.space import TrialPoint, data_request
    from trainers.datasets import load_dataset

    loaded = load_dataset(data_request(config, "shape"))
    table = layer_table(config.model.arch, loaded.num_classes, loaded.image_shape[1])
    space = config.space
    cells = study.points() if study else [(a, "", b) for a in space.allocators for b in space.budget]
    for allocator, variant, budget in cells:
        point = TrialPoint(allocator, budget, space.lr[0], space.weight_decay[0], space.label_smoothing[0], 1,
                           variant=variant or None)  # fmt: skip
        try:
            check_feasible(allocator, table, point.allocation_request(space))
        except Exception as exc:
            key = "--budgets" if study else "space.budget"
            method = f"{allocator} ({variant} mapping)" if variant else allocator
            raise ConfigError(f"{key}: {method} cannot allocate at {budget}: {exc}") from exc


def _new_record(
    client: MlflowClient, config: ExperimentConfig, experiment: str, uri: str, study: Study | None = None,
    optuna_storage: str | None = None,
) -> SearchRecord:  # fmt: skip
    """A new search: its name and Tune directory, and its parent run, opened now (tagged with where its
    Optuna study is stored, when it is)."""
    kind = f"-{study.kind}" if study else ""
    name = f"{config.name}{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    path = _storage_root(config) + "/" + name
    parent = tracking.open_parent_run(client, experiment, name, path, _redacted(config), study.kind if study else None)
    optuna_study = None
    if optuna_storage is not None:
        optuna_study = optuna_study_name(name, parent)
        tracking.set_tags(client, parent, {Tag.OPTUNA_STORAGE: optuna_storage, Tag.OPTUNA_STUDY: optuna_study})
    return SearchRecord(name, path, uri, experiment, parent, config.to_dict(),
                        dataclasses.asdict(study) if study else None, optuna_storage, optuna_study)  # fmt: skip


def _resumed_record(
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
    mine = _redacted(config)
    changed = [k for k, v in tracking.flatten(mine).items()
               if k not in RESUME_MAY_DIFFER and saved.get(k, defaults.get(k)) != v]  # fmt: skip
    if changed:
        raise ConfigError(f"cannot resume {tags[Tag.SEARCH]}: the config changed ({', '.join(changed[:5])})")
    path = tags[Tag.SEARCH_DIR]
    if not tune_state_saved(path):
        # killed before Tune first saved its experiment state (trials, searcher), or while it copied it: start over
        print(f"note: search {tags[Tag.SEARCH]} stopped before Tune saved a readable state in {path}: "
              "its trials start from the beginning, under the same parent run", flush=True)  # fmt: skip
    else:
        print(f"resuming search {tags[Tag.SEARCH]} from {path}", flush=True)
    # the study stays where the search began it (Tune restores the searcher, storage included)
    stored = tags.get(Tag.OPTUNA_STORAGE), tags.get(Tag.OPTUNA_STUDY)
    return SearchRecord(tags[Tag.SEARCH], path, uri, experiment, parent.info.run_id, config.to_dict(), None, *stored)


def _redacted(config: ExperimentConfig) -> dict[str, Any]:
    """The config as logged to MLflow: any password in a URI masked."""
    redacted: dict[str, Any] = json.loads(tracking.redact_uri(json.dumps(config.to_dict())))
    return redacted


def _storage_root(config: ExperimentConfig) -> str:
    root = storage_path_of(config)
    if "://" in root:
        return root.rstrip("/")
    return str(Path(root).expanduser().resolve())


def _run_tuner(
    config: ExperimentConfig, record: SearchRecord, resources: dict[str, float], resume: bool, study: Study | None,
    client: MlflowClient,
) -> None:  # fmt: skip
    """Run the trials; if the driver dies (Ctrl-C, an error), no run is left RUNNING."""
    from search.latency import open_book

    status = RunStatus.FAILED
    try:
        book = open_book(record.parent_run_id)  # the trials' shared latency cache: each plan timed once
        _fit(config, record, resources, resume, study)
        del book  # a named actor lives as long as a handle to it
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        print("interrupted: resume with --resume", file=sys.stderr)
        raise
    finally:
        if status != RunStatus.FINISHED:
            try:
                _close_leftover_runs(client, record, status)
                tracking.end_parent_run(client, record.parent_run_id, status)
            except tracking.TRACKING_FAILURES as exc:
                print(f"warning: could not end the MLflow runs: {tracking.first_line(exc)}", file=sys.stderr)


def _fit(
    config: ExperimentConfig, record: SearchRecord, resources: dict[str, float], resume: bool, study: Study | None
) -> None:
    from ray import tune

    from search.progress import ProgressAndRunCloser
    from search.scheduler import ParetoASHA, SchedulerStateKeeper
    from search.searcher import ParetoOptunaSearch, make_sampler, objectives, startup_trials
    from search.space import initial_points, param_space
    from search.study import study_space
    from search.trial import TrialSetup, run_trial

    setup = TrialSetup(config, record.tracking_uri, record.experiment_id, record.parent_run_id, resources["cpu"])
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)
    trials = study.trials if study else config.search.trials
    progress = ProgressAndRunCloser(record.tracking_uri, record.experiment_id, record.parent_run_id,
                                    trials, config.objectives.cost)  # fmt: skip
    scheduler = None if study or resume else _scheduler(config)
    callbacks: list[tune.Callback] = [progress]
    if isinstance(scheduler, ParetoASHA):
        callbacks.append(SchedulerStateKeeper(scheduler))  # Ray saves no scheduler state; this callback does
    run_config = tune.RunConfig(
        name=record.name, storage_path=record.path.rsplit("/", 1)[0], verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
        # one per trial: Tune's saved state may name one Ray already deleted, whatever num_to_keep is; a
        # resume copes (search/checkpoints.py)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )  # fmt: skip
    if study:
        # a grid, every cell trained to the end: no searcher, no early stopping
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=config.search.concurrency,
                                      reuse_actors=True)  # fmt: skip
        tuner = tune.Tuner(trainable, param_space=study_space(config, study), tune_config=tune_config,
                           run_config=run_config)  # fmt: skip
    elif resume:
        # the run config, callbacks included, comes back from the Tuner's own saved state
        tuner = tune.Tuner.restore(record.path, trainable=trainable, resume_errored=True)
    else:
        metrics, modes = objectives(config)
        first = initial_points(config.space, startup_trials(config), config.search.seed)
        searcher = ParetoOptunaSearch(metric=metrics, mode=modes, sampler=make_sampler(config),
                                      points_to_evaluate=first, epochs=config.space.epochs,
                                      **_optuna_study(record))  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(config.space),
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=config.search.trials,
                max_concurrent_trials=config.search.concurrency, reuse_actors=True,
            ),
            run_config=run_config,
        )  # fmt: skip
    results = tuner.fit()
    errored = {Path(results[i].path).name for i in range(len(results)) if results[i].error is not None}
    if len(results) < trials or _unfinished_trials(record.path, errored):
        raise KeyboardInterrupt  # Tune caught Ctrl-C (SIGINT), saved its state and returned early


def _optuna_study(record: SearchRecord) -> dict[str, Any]:
    """The searcher's study name, storage and attributes: stored where the record says, else in memory."""
    if record.optuna_storage is None or record.optuna_study is None:
        return {}
    from search.searcher import open_storage

    attrs = {Tag.SEARCH.value: record.name, Tag.PARENT.value: record.parent_run_id}  # what the dashboard shows
    return {"study_name": record.optuna_study, "storage": open_storage(record.optuna_storage), "study_attrs": attrs}


def _scheduler(config: ExperimentConfig) -> TrialScheduler:
    """The early-stopping rule `asha` asks for: Pareto-ranked rungs (default), Ray's ASHA on val_acc, or none."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    from search.scheduler import ParetoASHA
    from search.schema import ResultKey

    asha = config.asha
    if not asha.enabled:
        return FIFOScheduler()
    if asha.mode == "pareto":
        return ParetoASHA(config.objectives.cost, config.space.epochs, asha.grace_period, asha.reduction_factor)
    return AsyncHyperBandScheduler(
        time_attr=ResultKey.TRAINING_ITERATION.value, metric=ResultKey.ACCURACY.value, mode="max",
        max_t=config.space.epochs, grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
    )  # fmt: skip


def _close_leftover_runs(client: MlflowClient, record: SearchRecord, status: RunStatus) -> None:
    """No child run stays RUNNING once the driver stops: interrupted ones are KILLED (resume reopens them).

    A trial Tune stopped while it shut down after Ctrl-C ended its own run as "stopped" (Tune stops it as
    ASHA does, by raising SystemExit in `tune.report`); Tune's saved state still holds it unfinished, to run
    on at `--resume`, so its run is relabelled interrupted too.
    """
    unfinished = _unfinished_trials(record.path) if status == RunStatus.KILLED else set()
    for run in tracking.trial_runs(client, record.experiment_id, record.parent_run_id):
        stopped_by_shutdown = (run.data.tags.get(Tag.OUTCOME) == Outcome.STOPPED
                               and run.data.tags.get(Tag.TRIAL_ID) in unfinished)  # fmt: skip
        if run.info.status in ACTIVE_STATUSES or stopped_by_shutdown:
            reason = f"search ended ({status}) with the trial open"
            tracking.end_run(client, run.info.run_id, Outcome.INTERRUPTED, reason)


def _drop_runs_tune_forgot(client: MlflowClient, record: SearchRecord, known: set[str]) -> None:
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


def _saved_trials(path: str) -> list[Trial] | None:
    """The trials in Tune's saved state of the search in `path`; None when Tune saved none (or it is unreadable)."""
    if not tune_state_saved(path):
        return None
    try:
        return list(tune_analysis(path).trials)
    except (OSError, ValueError) as exc:  # a state Tune was writing when the driver stopped
        print(f"warning: cannot read Tune's saved state: {tracking.first_line(exc)}", file=sys.stderr)
        return None


def _unfinished_trials(path: str, errored: Collection[str] = ()) -> set[str]:
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

    trials = _saved_trials(path) or []
    ended = (Trial.TERMINATED, Trial.ERROR)
    return {t.trial_id for t in trials if t.status not in ended and Path(t.path or "").name not in errored}


def print_ui_hint(record: SearchRecord) -> None:
    """How to look at the search in the MLflow UI."""
    uri = tracking.redact_uri(record.tracking_uri)
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        print(f"MLflow UI: {base}/#/experiments/{record.experiment_id}/runs/{record.parent_run_id}")
        return
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"  then browse http://127.0.0.1:5000/#/experiments/{record.experiment_id}/runs/{record.parent_run_id}")
