"""Make MLflow agree with Tune: re-log what trials could not log (a lost server), end runs left open.

Tune keeps every result of every trial (result.json) and each trial's latest checkpoint (the loop
state, whose weights and epoch history are the run's, plus plan.json and the run id). From those,
`reconcile_search` creates missing child runs, logs missing params, plan, per-epoch metrics and final
weights, and gives each run the status its Tune trial ended with; a run still open whose trial Tune never
saved is ended as interrupted. It only adds what is missing, so it is safe to run again. The driver calls
it after every search; `precrop reconcile SEARCH_DIR` runs it (and the summary) by hand once a tracking
server that went away is back.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from precrop.errors import UserError
from precrop.width.plan import WidthPlan
from search.record import tracking
from search.record.checkpoints import read_checkpoint
from search.record.records import SearchRecord, tune_analysis, write_record
from search.record.run_logger import RunLogger, epoch_metrics, log_final, log_setup, setup_metrics, setup_params
from search.spec.config import ExperimentConfig
from search.spec.schema import ACTIVE_STATUSES, Artifact, Metric, Outcome, Param, ResultKey, Tag
from search.spec.space import TrialSpec, data_request
from trainers.checkpoint import Preprocess
from trainers.datasets import DataRequest
from trainers.load import load_dataset

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from ray.tune.experiment import Trial


@dataclass
class Reconciled:
    """What one reconciliation changed."""

    trials: int = 0
    runs_created: int = 0
    metrics_logged: int = 0
    runs_ended: int = 0
    models_logged: int = 0

    def describe(self) -> str:
        """One line for the console."""
        if not (self.runs_created or self.metrics_logged or self.runs_ended or self.models_logged):
            return f"MLflow matches Tune for all {self.trials} trials"
        return (f"re-logged from Tune: {self.runs_created} runs created, {self.metrics_logged} metric values, "
                f"{self.models_logged} final models, {self.runs_ended} runs ended")  # fmt: skip


@contextmanager
def one_line_errors(search_dir: str) -> Iterator[None]:
    """`precrop reconcile` on a broken or partial search directory ends with one line (a UserError), never a
    traceback: a local file error names the path, an MLflow failure the server, anything else that Tune's
    damaged records raise is named by its type and message."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if tracking.local_file_error(exc):
            raise UserError(f"cannot reconcile {search_dir}: {tracking.describe_file_error(exc)}") from exc
        why = tracking.redact_uri(tracking.first_line(exc))
        if isinstance(exc, tracking.TRACKING_FAILURES):
            raise tracking.TrackingError(f"cannot reconcile {search_dir}: MLflow stopped answering ({why})") from exc
        raise UserError(
            f"cannot reconcile {search_dir}: its Tune records are damaged or incomplete ({type(exc).__name__}: {why})"
        ) from exc


def with_parent_run(client: MlflowClient, record: SearchRecord) -> SearchRecord:
    """The record, with a new parent run (and experiment) when this server no longer has the original
    (a fresh database): the new ids are saved into the search's record."""
    if tracking.find_run(client, record.parent_run_id) is not None:
        return record
    config = record.experiment_config()
    experiment = tracking.experiment_id(client, config.experiment_name)
    kind = record.study["kind"] if record.study else None
    parent = tracking.open_parent_run(client, experiment, record.name, record.path, record.config, kind)
    print(f"note: {record.name}'s parent run is not in this MLflow; logged it again as {parent}")
    updated = dataclasses.replace(record, experiment_id=experiment, parent_run_id=parent)
    write_record(updated)
    return updated


def reconcile_search(client: MlflowClient, record: SearchRecord) -> Reconciled:
    """Bring every trial's MLflow run in line with what Tune recorded (see the module docstring)."""
    try:
        analysis = tune_analysis(record.path)
    except ValueError as exc:
        raise UserError(f"{record.path} holds no readable Tune state to reconcile from") from exc
    config = record.experiment_config()
    done = Reconciled()
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        rows = [] if frame is None else frame.to_dict("records")
        _reconcile_trial(client, record, config, trial, rows, done)
        done.trials += 1
    done.runs_ended += end_runs_of_lost_trials(client, record, {t.trial_id for t in analysis.trials})
    return done


def end_runs_of_lost_trials(client: MlflowClient, record: SearchRecord, known: set[str]) -> int:
    """End (KILLED, outcome interrupted) the search's open trial runs whose trial Tune's saved state does not
    hold (`known`: the trial ids it does): a driver killed before Tune saved a new trial leaves its run
    RUNNING, and no resume continues it (the searcher proposes the point again as another trial).
    Returns how many it ended."""
    ended = 0
    for run in tracking.trial_runs(client, record.experiment_id, record.parent_run_id):
        trial_id = run.data.tags.get(Tag.TRIAL_ID)
        if run.info.status in ACTIVE_STATUSES and trial_id not in known:
            reason = f"Tune's saved state holds no trial {trial_id}: the driver stopped before Tune saved it"
            tracking.end_run(client, run.info.run_id, Outcome.INTERRUPTED, reason)
            ended += 1
    return ended


def _reconcile_trial(
    client: MlflowClient, record: SearchRecord, config: ExperimentConfig, trial: Trial, rows: list[dict[str, Any]],
    done: Reconciled,
) -> None:  # fmt: skip
    saved = read_checkpoint(trial.checkpoint)
    plan = saved.plan if saved else None
    log = RunLogger(client, strict=True)
    run = _find_or_create_run(log, record, trial, saved.run_id if saved else None, done)
    last = rows[-1] if rows else {}
    if Param.ALLOCATOR not in run.data.params and plan is not None:
        costs: dict[str, float] = {
            k: float(last[k]) for k in (Metric.MACS, Metric.PARAMS, Metric.LATENCY_MS) if _number(last.get(k))
        }
        spec = TrialSpec.resolve(config, trial.config)
        log_setup(log, setup_params(config, spec, plan), setup_metrics(plan, costs), plan, _widths_table(plan))
    # a diverged trial's last report repeats its last finished epoch (or holds no epoch at all)
    epochs = [epoch_metrics(r) for r in rows if r.get(ResultKey.DIVERGED) != 1 and _number(r.get(ResultKey.EPOCH))]
    done.metrics_logged += _log_missing_metrics(client, str(log.run_id), epochs)
    if run.info.status not in ACTIVE_STATUSES and Tag.OUTCOME in run.data.tags:
        return
    if last.get(ResultKey.COMPLETE) == 1 and saved is not None and plan is not None:
        done.models_logged += not tracking.has_artifacts(client, str(log.run_id), Artifact.MODEL_DIR)
        epoch = int(last[ResultKey.EPOCH])
        summary: dict[str, float] = {Metric.FINAL_VAL_ACC: float(last[ResultKey.ACCURACY])}
        log_final(log, plan, saved.state["model"], summary, epoch, _preprocess(config))
    else:
        outcome, reason = _ending(trial.status, last)
        tracking.end_run(client, str(log.run_id), outcome, reason)
    done.runs_ended += 1


def _find_or_create_run(log: RunLogger, record: SearchRecord, trial: Trial, known: str | None, done: Reconciled) -> Run:
    """The trial's run: the one its checkpoint names (if this server has it under this search), else the
    one tagged with its trial id, else a new one."""
    client = log.client
    run = _run_of_search(client, known, record.parent_run_id) if known else None
    if run is None:
        found = tracking.find_trial_run(client, record.experiment_id, record.parent_run_id, trial.trial_id)
        run = tracking.get_run(client, found) if found else None
    if run is None:
        created = tracking.create_trial_run(client, record.experiment_id, record.parent_run_id, trial.trial_id,
                                            str(trial))  # fmt: skip
        run = tracking.get_run(client, created)
        done.runs_created += 1
    log.run_id = run.info.run_id
    return run


def _run_of_search(client: MlflowClient, run_id: str, parent_id: str) -> Run | None:
    """Run `run_id` when this server has it as a child of `parent_id`, else None."""
    run = tracking.find_run(client, run_id)
    return run if run is not None and run.data.tags.get(Tag.PARENT) == parent_id else None


def _log_missing_metrics(client: MlflowClient, run_id: str, epochs: list[dict[str, float]]) -> int:
    """Log the (metric, epoch) values the run lacks; return how many."""
    keys = sorted({k for metrics in epochs for k in metrics})
    logged = {k: tracking.logged_steps(client, run_id, k) for k in keys}
    missing: dict[int, dict[str, float]] = {}
    for metrics in epochs:
        step = int(metrics.get(Metric.EPOCH, 0))
        for key, value in metrics.items():
            if math.isfinite(value) and step not in logged[key]:
                missing.setdefault(step, {})[key] = value
                logged[key].add(step)
    for step, values in sorted(missing.items()):
        tracking.log_metrics(client, run_id, values, step=step)
    return sum(len(v) for v in missing.values())


def _ending(tune_status: str, last: dict[str, Any]) -> tuple[Outcome, str]:
    """(outcome, reason) of a trial that did not train to the end (its run status: schema.RUN_STATUS)."""
    if last.get(ResultKey.DIVERGED) == 1:
        return Outcome.DIVERGED, "the loss became non-finite (re-logged from Tune)"
    if tune_status == "ERROR":
        return Outcome.FAILED, "the trial raised an error (retries exhausted; re-logged from Tune)"
    if tune_status == "TERMINATED":
        return Outcome.STOPPED, "stopped early by ASHA (re-logged from Tune)"
    return Outcome.INTERRUPTED, f"the search ended with the trial {tune_status.lower()}"


@functools.cache
def _preprocess_of(request: DataRequest) -> Preprocess:
    """The preprocessing a trial trained with: its training data's normalization (loaded once per request)."""
    return Preprocess.from_dataset(load_dataset(request))


def _preprocess(config: ExperimentConfig) -> Preprocess:
    """What the search's trials fed their models, logged with a re-logged model so its export normalizes."""
    return _preprocess_of(data_request(config, "train"))


def _widths_table(plan: WidthPlan) -> str:
    from precrop.methods.plan_report import render_plan
    from precrop.nn.build import layer_table

    return render_plan(plan, layer_table(plan.arch, plan.num_classes, plan.input_shape[1]))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
