"""The search driver: check the config, start (or join) Ray, run the Tuner, then summarize the front.

A search is named `<config name>-<UTC time>`; Tune keeps its state under `ray.storage_path/<search>`
and MLflow holds one parent run tagged with the same name. `--resume` finds the latest search of the
config in MLflow, restores the Tuner from its directory (searcher state included) and reopens the
parent run, so finished trials are not run again and interrupted ones continue their own child runs.
What differs between a new search, a resumed one and a study is a `Launch` (search/run/launch.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from precrop.errors import UserError
from search.infra.storage import uncreatable_folder
from search.record import tracking
from search.record.records import SearchRecord, read_record, write_record
from search.run.cluster import check_ray_can_run, init_ray, ray_address, trial_resources
from search.run.launch import Launch, choose_launch
from search.run.summary import NOTHING_TRAINED, finish_search
from search.run.tune_state import close_leftover_runs, unfinished_trials
from search.spec.config import ConfigError, ExperimentConfig
from search.spec.grid import Study
from search.spec.locations import storage_path_of, tracking_uri_of
from search.spec.schema import RunStatus

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from precrop.width.costmodel import LayerTable

# what the libraries would otherwise print or send; each applies unless the user set it
LIBRARY_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # one checkpoint per epoch of short trials is expected here, not a misconfiguration to warn about
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # a reused actor waits this long for its previous trial's thread (an ASHA-stopped trial ends its
    # MLflow run on the way out; MLflow gives up on a lost server within about 10 s)
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "15",
}


def run_search(config: ExperimentConfig, resume: bool = False, study: Study | None = None) -> int:
    """Run (or resume) the search `config` describes; print the front; return the exit code.

    With `study`, the trials are that study's fixed grid instead of a search (see search/studies/study.py),
    and the end prints the study's table instead of the front.
    """
    for name, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    started = time.perf_counter()
    tracking.bound_http_retries()
    preflight(config, study)
    address = ray_address(config)
    check_ray_can_run(config, address)  # before MLflow: a search Ray cannot run writes nothing
    uri = tracking.resolve_tracking_uri(tracking_uri_of(config))
    launch = choose_launch(config, uri, resume, study)
    client = tracking.client_for(uri)
    experiment = tracking.experiment_id(client, config.experiment_name)
    launch = launch.before_ray(client, experiment)
    # Ray is joined (and the resources checked) before a new search opens its parent run: a cluster
    # that cannot run it leaves nothing behind in MLflow
    ray_started = init_ray(config, address)
    record: SearchRecord | None = None
    try:
        resources = trial_resources(config, ray_started.embedded)
        record = launch.open_record(client, experiment)
        write_record(record)
        _announce(config, record, launch)
        _run_tuner(config, record, resources, launch, client)
    except KeyboardInterrupt:
        ray_started.shutdown()
        if record is not None:
            _relabel_after_shutdown(client, record)
        raise
    finally:
        ray_started.shutdown()
    trained = _finish(client, record, config, study, uri)
    print(f"search took {time.perf_counter() - started:.0f} s")
    print_ui_hint(record)
    if not trained:  # every trial failed (or diverged): the error lines above say why
        print(f"precrop: {NOTHING_TRAINED}: the error lines above say why each trial ended", file=sys.stderr)
        return 1
    return 0


def _announce(config: ExperimentConfig, record: SearchRecord, launch: Launch) -> None:
    print(f"{launch.what} {record.name}: {launch.trials} trials of {config.model.arch} on {config.data.name}; "
          f"MLflow experiment {config.experiment_name!r} (parent run {record.parent_run_id})", flush=True)  # fmt: skip
    if record.optuna_storage is not None:
        print(f"Optuna study {record.optuna_study} in {record.optuna_storage}", flush=True)
    elif launch.what == "search" and config.search.optuna_storage == "auto":
        print("note: this search keeps its Optuna study in memory: set search.optuna_storage or "
              "$PRECROP_OPTUNA_STORAGE to a database to keep it for optuna-dashboard", flush=True)  # fmt: skip


def _finish(client: MlflowClient, record: SearchRecord, config: ExperimentConfig, study: Study | None,
            uri: str) -> bool:  # fmt: skip
    """The end of the search (search/run/summary.py); whether any trial trained. A failure ends the parent run."""
    try:
        return finish_search(client, read_record(record.path), config, study)
    except BaseException as exc:
        failure = _finish_failed(client, record, uri, exc)
        if failure is exc:
            raise
        raise failure from exc


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
    from search.spec.space import allocation_request, data_request
    from trainers.load import load_dataset

    root = storage_path_of(config)
    if (why := uncreatable_folder(root)) is not None:
        raise ConfigError(f"ray.storage_path: Tune cannot keep the search in {root[:200]}: {why}")
    loaded = load_dataset(data_request(config, "shape"))
    try:
        data_request(config).check_subset(loaded.num_classes)
    except UserError as exc:
        raise ConfigError(f"data.train_subset: {exc}") from None
    table = layer_table(config.model.arch, loaded.num_classes, loaded.image_shape[1])
    space = config.space
    cells = study.points() if study else [(a, "", b) for a in space.allocators for b in space.budget]
    _check_keep(config, table, {allocator for allocator, _, _ in cells})
    for allocator, variant, budget in cells:
        try:
            check_feasible(allocator, table, allocation_request(space, budget, variant or None, config.model.keep))
        except Exception as exc:
            key = "--budgets" if study else "space.budget"
            method = f"{allocator} ({variant} mapping)" if variant else allocator
            raise ConfigError(f"{key}: {method} cannot allocate at {budget}: {exc}") from exc


def _check_keep(config: ExperimentConfig, table: LayerTable, allocators: set[str]) -> None:
    """model.keep must name layers of the model, and is for width methods only (mask methods keep every width)."""
    from precrop.methods.registry import MASK_METHODS
    from precrop.width.keep import kept_groups

    if not config.model.keep:
        return
    try:
        kept_groups(table, config.model.keep)
    except UserError as exc:
        raise ConfigError(f"model.keep: {exc}") from None
    if masks := sorted(allocators & set(MASK_METHODS)):
        raise ConfigError(f"model.keep: keeps widths at base, which mask methods ({', '.join(masks)}) never change; "
                          "drop them from the allocators or drop model.keep")  # fmt: skip


def _relabel_after_shutdown(client: MlflowClient, record: SearchRecord) -> None:
    """After Ctrl-C, close the trial runs once more, now that Ray is down: a trial Tune stopped on its way
    out ends its own run as "stopped" when its thread next reaches `tune.report`, which on a loaded machine
    can come after `_run_tuner` closed the runs; no trial process of an embedded Ray is left to do so now
    (on a joined cluster Ray ends the job's workers as the driver leaves, so a late write stays possible)."""
    try:
        close_leftover_runs(client, record, RunStatus.KILLED)
    except tracking.TRACKING_FAILURES as exc:
        print(f"warning: could not end the MLflow runs: {tracking.first_line(exc)}", file=sys.stderr)


def _run_tuner(config: ExperimentConfig, record: SearchRecord, resources: dict[str, float], launch: Launch,
               client: MlflowClient) -> None:  # fmt: skip
    """Run the trials; if the driver dies (Ctrl-C, an error), no run is left RUNNING."""
    from search.run.latency import open_book

    status = RunStatus.FAILED
    try:
        book = open_book(record.parent_run_id)  # the trials' shared latency cache: each plan timed once
        _fit(config, record, resources, launch)
        del book  # a named actor lives as long as a handle to it
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        print("interrupted: resume with --resume", file=sys.stderr)
        raise
    finally:
        if status != RunStatus.FINISHED:
            try:
                close_leftover_runs(client, record, status)
                tracking.end_parent_run(client, record.parent_run_id, status)
            except tracking.TRACKING_FAILURES as exc:
                print(f"warning: could not end the MLflow runs: {tracking.first_line(exc)}", file=sys.stderr)


def _fit(config: ExperimentConfig, record: SearchRecord, resources: dict[str, float], launch: Launch) -> None:
    """The launch's Tuner, fit; KeyboardInterrupt when Tune returned early because of Ctrl-C."""
    from ray import tune

    from search.run.progress import ProgressAndRunCloser
    from search.run.trial import TrialSetup, run_trial

    setup = TrialSetup(config, record.tracking_uri, record.experiment_id, record.parent_run_id, resources["cpu"])
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)
    progress = ProgressAndRunCloser(
        record.tracking_uri, record.experiment_id, record.parent_run_id, launch.trials, config.objectives.cost,
        config.space.epochs, config.search.progress_every_s, config.constraints.limits(),
    )  # fmt: skip
    try:
        results = launch.tuner(trainable, record, [progress]).fit()
    finally:
        progress.close_view()
    errored = {Path(results[i].path).name for i in range(len(results)) if results[i].error is not None}
    if len(results) < launch.trials or unfinished_trials(record.path, errored):
        raise KeyboardInterrupt  # Tune caught Ctrl-C (SIGINT), saved its state and returned early


def print_ui_hint(record: SearchRecord) -> None:
    """How to look at the search in the MLflow UI."""
    uri = tracking.redact_uri(record.tracking_uri)
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        print(f"MLflow UI: {base}/#/experiments/{record.experiment_id}/runs/{record.parent_run_id}")
        return
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"  then browse http://127.0.0.1:5000/#/experiments/{record.experiment_id}/runs/{record.parent_run_id}")
