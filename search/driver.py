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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import ConfigError, ExperimentConfig, storage_path_of, tracking_uri_of
from search.reconcile import SearchRecord, write_record
from search.study import Study

SEARCH_TAG = "precrop.search"
STUDY_TAG = "precrop.study"
CONFIG_TAG = "precrop.config"
CONFIG_NAME_TAG = "precrop.config_name"
# keys that may differ between the original run and a resume
RESUME_MAY_DIFFER = ("ray.address",)


@dataclass(frozen=True)
class SearchHandle:
    """Where a search lives: its name, Tune directory and MLflow parent run."""

    name: str
    path: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str


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
    from search import tracking

    started = time.perf_counter()
    tracking.bound_http_retries()
    preflight(config, study)
    uri = tracking.resolve_tracking_uri(tracking_uri_of(config))
    client = tracking.client_for(uri)
    experiment = tracking.experiment_id(client, config.experiment_name)
    if resume:
        handle = _resume_handle(client, config, experiment, uri)
    # Ray is joined (and the resources checked) before a new search opens its parent run: a cluster
    # that cannot run it leaves nothing behind in MLflow
    import ray

    embedded = _init_ray(config)
    try:
        resources = _trial_resources(config, embedded)
        if resume:
            tracking.reopen_run(client, handle.parent_run_id)
        else:
            handle = _new_handle(client, config, experiment, uri, study)
        write_record(SearchRecord(handle.name, handle.path, uri, experiment, handle.parent_run_id, config.to_dict(),
                                  dataclasses.asdict(study) if study else None))  # fmt: skip
        _announce(config, handle, study)
        from ray.tune import Tuner

        restore = resume and Tuner.can_restore(handle.path)  # see _resume_handle
        _run_tuner(config, handle, resources, restore, study, client)
    finally:
        ray.shutdown()
    try:
        _finish(client, config, handle, study)
    except BaseException as exc:
        failure = _finish_failed(client, handle, uri, exc)
        if failure is exc:
            raise
        raise failure from exc
    print(f"search took {time.perf_counter() - started:.0f} s")
    print_ui_hint(handle)
    return 0


def _announce(config: ExperimentConfig, handle: SearchHandle, study: Study | None) -> None:
    trials = study.trials if study else config.search.trials
    what = f"{study.kind} study" if study else "search"
    print(f"{what} {handle.name}: {trials} trials of {config.model.arch} on {config.data.name}; "
          f"MLflow experiment {config.experiment_name!r} (parent run {handle.parent_run_id})", flush=True)  # fmt: skip


def _finish(client: Any, config: ExperimentConfig, handle: SearchHandle, study: Study | None) -> None:
    """Re-log what trials could not (see search/reconcile.py), then the front (or the study's table)."""
    from search.latency import retime_search
    from search.reconcile import read_record, reconcile_search
    from search.summary import summarize, summarize_study

    done = reconcile_search(client, read_record(handle.path))
    if done.runs_created or done.metrics_logged or done.models_logged:
        print(done.describe(), flush=True)
    retimed = retime_search(client, config, handle.experiment_id, handle.parent_run_id)  # before the front
    if retimed.runs:
        print(retimed.describe(), flush=True)
    if study is None:
        summarize(client, config, handle)
    else:
        summarize_study(client, config, handle, study)
    client.set_terminated(handle.parent_run_id, status="FINISHED")


def _finish_failed(client: Any, handle: SearchHandle, uri: str, exc: BaseException) -> BaseException:
    """What to raise when the end of a search failed; the parent run does not stay RUNNING.

    MLflow's own failures name the server; a local file error (a path under the Tune directory that is
    gone, a disk that is full) names the path and is not blamed on MLflow. Either way Tune keeps every
    result, so `precrop reconcile` can finish the job later.
    """
    from precrop.errors import UserError
    from search import tracking

    later = f"every trial's results are kept by Tune in {handle.path}"
    if isinstance(exc, tracking.TRACKING_FAILURES) and not tracking.local_file_error(exc):
        why = tracking.redact_uri(tracking.first_line(exc))
        return tracking.TrackingError(
            f"MLflow at {tracking.redact_uri(uri)} stopped answering ({why}); {later}: once the server is back, "
            f"run `precrop reconcile {handle.path}`"
        )  # fmt: skip
    reason = f"the search's end failed: {type(exc).__name__}: {tracking.first_line(exc)}"
    try:
        tracking.set_tags(client, handle.parent_run_id, {"precrop.reason": reason[:5000]})
        client.set_terminated(handle.parent_run_id, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
    except tracking.TRACKING_FAILURES as failed:
        print(f"warning: could not end the parent run: {tracking.first_line(failed)}", file=sys.stderr)
    if tracking.local_file_error(exc):
        return UserError(
            f"{tracking.describe_file_error(exc)} (a local file, not MLflow); {later}: once the path is back, "
            f"run `precrop reconcile {handle.path}`"
        )  # fmt: skip
    return exc


def preflight(config: ExperimentConfig, study: Study | None = None) -> None:
    """Fail fast, before Ray starts: the data must load and every allocator must meet the budget range
    (or, for a study, every cell of its grid)."""
    from precrop.methods.registry import check_feasible
    from precrop.nn.build import layer_table
    from search.space import TrialPoint
    from trainers.datasets import DataRequest, load_dataset

    data = config.data
    resident = "no" if data.name == "imagefolder" else "auto"  # only the shape and classes are needed here
    request = DataRequest(data.name, data.data_dir, val_fraction=data.val_fraction, image_size=data.image_size,
                          resident=resident, download=data.download)  # fmt: skip
    loaded = load_dataset(request)
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


def _new_handle(
    client: Any, config: ExperimentConfig, experiment: str, uri: str, study: Study | None = None
) -> SearchHandle:
    kind = f"-{study.kind}" if study else ""
    name = f"{config.name}{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    path = _storage_root(config) + "/" + name
    parent = open_parent_run(client, experiment, name, path, _redacted(config), study.kind if study else None)
    return SearchHandle(name, path, experiment, parent, uri)


def open_parent_run(
    client: Any, experiment: str, name: str, path: str, shown: dict[str, Any], study_kind: str | None
) -> str:
    """Create a search's parent run: the (redacted) config as params and tag, the name and Tune directory."""
    from search import tracking

    parent = tracking.start_parent_run(client, experiment, name, {**tracking.flatten(shown), "search_dir": path})
    tags = {SEARCH_TAG: name, CONFIG_NAME_TAG: str(shown["name"]), CONFIG_TAG: json.dumps(shown),
            "precrop.search_dir": path}  # fmt: skip
    if study_kind:
        tags[STUDY_TAG] = study_kind
    tracking.set_tags(client, parent, tags)
    return parent


def _resume_handle(client: Any, config: ExperimentConfig, experiment: str, uri: str) -> SearchHandle:
    from search import tracking

    runs = client.search_runs(
        [experiment], f"tags.`{CONFIG_NAME_TAG}` = '{config.name}'", order_by=["attributes.start_time DESC"],
        max_results=1,
    )  # fmt: skip
    if not runs:
        raise ConfigError(f"nothing to resume: no search of config {config.name!r} in {uri}")
    parent = runs[0]
    saved = json.loads(parent.data.tags[CONFIG_TAG])
    mine = _redacted(config)
    changed = [k for k, v in tracking.flatten(mine).items()
               if k not in RESUME_MAY_DIFFER and tracking.flatten(saved).get(k) != v]  # fmt: skip
    if changed:
        raise ConfigError(
            f"cannot resume {parent.data.tags[SEARCH_TAG]}: the config changed ({', '.join(changed[:5])})"
        )
    path = parent.data.tags["precrop.search_dir"]
    from ray.tune import Tuner

    if not Tuner.can_restore(path):
        # killed before its Tuner was built (Tune saves tuner.pkl then, before any trial runs): start over
        print(f"note: search {parent.data.tags[SEARCH_TAG]} stopped before Tune saved any state in {path}: "
              "its trials start from the beginning, under the same parent run", flush=True)  # fmt: skip
    else:
        print(f"resuming search {parent.data.tags[SEARCH_TAG]} from {path}", flush=True)
    return SearchHandle(parent.data.tags[SEARCH_TAG], path, experiment, parent.info.run_id, uri)


def _redacted(config: ExperimentConfig) -> dict[str, Any]:
    """The config as logged to MLflow: any password in a URI masked."""
    from search.tracking import redact_uri

    redacted: dict[str, Any] = json.loads(redact_uri(json.dumps(config.to_dict())))
    return redacted


def _storage_root(config: ExperimentConfig) -> str:
    root = storage_path_of(config)
    if "://" in root:
        return root.rstrip("/")
    return str(Path(root).expanduser().resolve())


def _run_tuner(
    config: ExperimentConfig, handle: SearchHandle, resources: dict[str, float], resume: bool, study: Study | None,
    client: Any,
) -> None:  # fmt: skip
    """Run the trials; if the driver dies (Ctrl-C, an error), no run is left RUNNING."""
    from search import tracking
    from search.latency import open_book

    status = "FAILED"
    try:
        book = open_book(handle.parent_run_id)  # the trials' shared latency cache: each plan timed once
        _fit(config, handle, resources, resume, study)
        del book  # a named actor lives as long as a handle to it
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: resume with --resume", file=sys.stderr)
        raise
    finally:
        if status != "FINISHED":
            try:
                _close_leftover_runs(client, handle, status)
                client.set_terminated(handle.parent_run_id, status=status)
            except tracking.TRACKING_FAILURES as exc:
                print(f"warning: could not end the MLflow runs: {tracking.first_line(exc)}", file=sys.stderr)


def _fit(
    config: ExperimentConfig, handle: SearchHandle, resources: dict[str, float], resume: bool, study: Study | None
) -> None:
    from ray import tune

    from search.progress import ProgressAndRunCloser
    from search.scheduler import ParetoASHA, SchedulerStateKeeper
    from search.searcher import ParetoOptunaSearch, make_sampler, objectives, startup_trials
    from search.space import initial_points, param_space
    from search.trial import TrialSetup, run_trial

    setup = TrialSetup(config, handle.tracking_uri, handle.experiment_id, handle.parent_run_id, resources["cpu"])
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)
    trials = study.trials if study else config.search.trials
    progress = ProgressAndRunCloser(handle.tracking_uri, handle.experiment_id, handle.parent_run_id,
                                    trials, config.objectives.cost)  # fmt: skip
    scheduler = None if study or resume else _scheduler(config)
    callbacks: list[Any] = [progress]
    if isinstance(scheduler, ParetoASHA):
        callbacks.append(SchedulerStateKeeper(scheduler))  # Ray saves no scheduler state; this callback does
    run_config = tune.RunConfig(
        name=handle.name, storage_path=handle.path.rsplit("/", 1)[0], verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
        # one per trial: Tune's saved state may name one Ray already deleted, whatever num_to_keep is; a
        # resume copes (search/checkpoints.py)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )  # fmt: skip
    if study:
        from search.study import study_space

        # a grid, every cell trained to the end: no searcher, no early stopping
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=config.search.concurrency,
                                      reuse_actors=True)  # fmt: skip
        tuner = tune.Tuner(trainable, param_space=study_space(config, study), tune_config=tune_config,
                           run_config=run_config)  # fmt: skip
    elif resume:
        # the run config, callbacks included, comes back from the Tuner's own saved state
        tuner = tune.Tuner.restore(handle.path, trainable=trainable, resume_errored=True)
    else:
        metrics, modes = objectives(config)
        first = initial_points(config.space, startup_trials(config), config.search.seed)
        searcher = ParetoOptunaSearch(metric=metrics, mode=modes, sampler=make_sampler(config),
                                      points_to_evaluate=first, epochs=config.space.epochs)  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(config.space),
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=config.search.trials,
                max_concurrent_trials=config.search.concurrency, reuse_actors=True,
            ),
            run_config=run_config,
        )  # fmt: skip
    tuner.fit()


def _init_ray(config: ExperimentConfig) -> bool:
    """Start an embedded Ray or join a cluster; True when embedded (this driver owns the whole cluster)."""
    import logging

    import ray

    address = ray_address(config)
    try:
        if address is None:
            # trials print nothing useful; their errors reach the driver through Tune
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            return True
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = "" if config.ray.address else " (found by `ray start`; pass --address local for an embedded Ray)"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"ray.address {address!r}: cannot connect{hint}: {first}") from exc
    have, nodes = ray.cluster_resources(), sum(node["Alive"] for node in ray.nodes())
    print(f"joined the Ray cluster at {address}: {nodes} node(s), {have.get('CPU', 0):g} CPUs, "
          f"{have.get('GPU', 0):g} GPUs now (autoscaling adds workers while trials wait)", flush=True)  # fmt: skip
    return False


def ray_address(config: ExperimentConfig) -> str | None:
    """The cluster to join, or None for an embedded Ray started by this driver.

    In order: `ray.address` (or --address; `local` forces an embedded Ray), $RAY_ADDRESS, then the
    cluster that `ray start` began on this machine. The last is how `ray submit` works: it runs the
    script on the head node, where no address was passed. A leftover address of a cluster that no
    longer answers is ignored (joining it would hang in Ray's reconnect loop).
    """
    from ray._private.utils import read_ray_address

    chosen = config.ray.address or os.environ.get("RAY_ADDRESS", "").strip()
    if not chosen:
        found: str | None = read_ray_address()
        if found and not _answers(found):
            print(f"note: the Ray cluster recorded at {found} does not answer; starting an embedded Ray", flush=True)
            found = None
        chosen = found or ""
    return None if not chosen or chosen == "local" else chosen


def _answers(address: str) -> bool:
    """Whether HOST:PORT accepts a TCP connection within 2 s."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def _trial_resources(config: ExperimentConfig, embedded: bool) -> dict[str, float]:
    """CPU and GPU per trial. An embedded Ray on a machine without GPUs drops the GPU request (with a
    note), so one config runs on a laptop and a cluster; a joined cluster must show a GPU within
    `ray.gpu_wait_s` (its autoscaler may be starting one), else the search stops before it begins."""
    import ray

    resources = {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    if resources["gpu"] > 0 and embedded and not ray.cluster_resources().get("GPU"):
        print("note: this machine has no GPU; trials run on CPU", flush=True)
        resources["gpu"] = 0.0
    elif resources["gpu"] > 0 and not embedded:
        _wait_for_gpus(config.ray.gpu_wait_s, resources["gpu"])
    available = ray.cluster_resources().get("CPU", 0)
    if embedded and resources["cpu"] > available:
        raise ConfigError(f"resources.cpu: each trial asks for {resources['cpu']} CPUs, this machine has {available}")
    return resources


def _wait_for_gpus(timeout_s: float, per_trial: float) -> None:
    """Return once the joined cluster has a GPU; ask its autoscaler for one while waiting."""
    import ray
    from ray.autoscaler.sdk import request_resources

    if ray.cluster_resources().get("GPU", 0) > 0:
        return
    print(f"the cluster has no GPU yet: asking its autoscaler for one (waiting up to {timeout_s:.0f} s)", flush=True)
    deadline = time.monotonic() + timeout_s
    try:
        request_resources(bundles=[{"GPU": per_trial}])
        while time.monotonic() < deadline:
            if ray.cluster_resources().get("GPU", 0) > 0:
                return
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    finally:
        request_resources(bundles=[])  # from here on, the trials' own demand drives the autoscaler
    raise ConfigError(
        f"resources.gpu: the Ray cluster has no GPU after {timeout_s:.0f} s (set resources.gpu: 0 to train on "
        "CPUs, add GPU workers, or raise ray.gpu_wait_s)"
    )


def _scheduler(config: ExperimentConfig) -> Any:
    """The early-stopping rule `asha` asks for: Pareto-ranked rungs (default), Ray's ASHA on val_acc, or none."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    from search.scheduler import ParetoASHA

    asha = config.asha
    if not asha.enabled:
        return FIFOScheduler()
    if asha.mode == "pareto":
        return ParetoASHA(config.objectives.cost, config.space.epochs, asha.grace_period, asha.reduction_factor)
    return AsyncHyperBandScheduler(
        time_attr="training_iteration", metric="val_acc", mode="max", max_t=config.space.epochs,
        grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
    )  # fmt: skip


def _close_leftover_runs(client: Any, handle: SearchHandle, status: str) -> None:
    """No child run stays RUNNING once the driver stops: interrupted ones are KILLED (resume reopens them)."""
    from search import tracking

    for run in tracking.trial_runs(client, handle.experiment_id, handle.parent_run_id):
        if run.info.status in tracking.ACTIVE:
            outcome = "interrupted" if status != "FINISHED" else "failed"
            tracking.end_run(client, run.info.run_id, "KILLED", outcome, f"search ended ({status}) with the trial open")


def print_ui_hint(handle: SearchHandle) -> None:
    """How to look at the search in the MLflow UI."""
    from search.tracking import redact_uri

    uri = redact_uri(handle.tracking_uri)
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        print(f"MLflow UI: {base}/#/experiments/{handle.experiment_id}/runs/{handle.parent_run_id}")
        return
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"  then browse http://127.0.0.1:5000/#/experiments/{handle.experiment_id}/runs/{handle.parent_run_id}")
