"""Make MLflow agree with Tune: re-log what trials could not log (a lost server), end runs left open.

Tune keeps every result of every trial (result.json) and each trial's latest checkpoint (the loop
state, whose weights and epoch history are the run's, plus plan.json and the run id). From those,
`reconcile_search` creates missing child runs, logs missing params, plan, per-epoch metrics and final
weights, and gives each run the status its Tune trial ended with. It only adds what is missing, so
it is safe to run again. The driver calls it after every search; `precrop reconcile SEARCH_DIR` runs
it (and the summary) by hand once a tracking server that went away is back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from precrop.errors import UserError
from precrop.width.plan import WidthPlan
from search import tracking
from search.config import ExperimentConfig, parse_config
from search.run_logger import RunLogger
from search.searcher import COMPLETE_KEY, DIVERGED_KEY
from search.space import TrialPoint
from search.study import Study

RECORD_FILE = "precrop-search.json"


@dataclass(frozen=True)
class SearchRecord:
    """What `precrop reconcile` needs to find a search's runs again, kept beside Tune's state."""

    name: str
    path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    config: dict[str, Any]
    study: dict[str, Any] | None = None

    def experiment_config(self) -> ExperimentConfig:
        """The search's config."""
        return parse_config(self.config)

    def study_grid(self) -> Study | None:
        """The study's grid, for a study."""
        if self.study is None:
            return None
        grid = self.study
        return Study(str(grid["kind"]), str(grid["dimension"]), tuple(grid["values"]), tuple(grid["budgets"]),
                     tuple(grid["seeds"]), grid.get("out_dir"))  # fmt: skip


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


def write_record(record: SearchRecord) -> None:
    """Save the record into the search's Tune directory (local or remote storage)."""
    text = json.dumps(dataclasses.asdict(record), indent=2) + "\n"
    fs, path = _filesystem(record.path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{RECORD_FILE}") as stream:
        stream.write(tracking.redact_uri(text).encode())


def read_record(search_dir: str) -> SearchRecord:
    """The record of the search kept in `search_dir`; UserError when it holds none."""
    fs, path = _filesystem(search_dir.rstrip("/"))
    try:
        with fs.open_input_stream(f"{path}/{RECORD_FILE}") as stream:
            data = json.loads(stream.readall().decode())
        return SearchRecord(**data)
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a JSON that is not a record
        raise UserError(f"{search_dir} is not a search directory (no readable {RECORD_FILE})") from exc


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


def reconcile_search(client: Any, record: SearchRecord) -> Reconciled:
    """Bring every trial's MLflow run in line with what Tune recorded (see the module docstring)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(record.path)
    except ValueError as exc:
        raise UserError(f"{record.path} holds no readable Tune state to reconcile from") from exc
    config = record.experiment_config()
    done = Reconciled()
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        rows = [] if frame is None else frame.to_dict("records")
        _reconcile_trial(client, record, config, trial, rows, done)
        done.trials += 1
    return done


def _reconcile_trial(
    client: Any, record: SearchRecord, config: ExperimentConfig, trial: Any, rows: list[dict[str, Any]],
    done: Reconciled,
) -> None:  # fmt: skip
    from search.trial import epoch_metrics, log_final, log_setup, read_checkpoint, setup_metrics, setup_params

    saved = read_checkpoint(trial.checkpoint)
    plan = saved.plan if saved else None
    log = RunLogger(client, strict=True)
    run = _find_or_create_run(log, record, trial, saved.run_id if saved else None, done)
    point = TrialPoint.from_config(trial.config)
    last = rows[-1] if rows else {}
    if "allocator" not in run.data.params and plan is not None:
        seed = point.seed if point.seed is not None else config.search.seed
        costs = {k: float(last[k]) for k in ("macs", "params", "latency_ms") if _number(last.get(k))}
        log_setup(log, setup_params(config, point, plan, seed), setup_metrics(plan, costs), plan, _widths_table(plan))
    # a diverged trial's last report repeats its last finished epoch (or holds no epoch at all)
    epochs = [epoch_metrics(r) for r in rows if r.get(DIVERGED_KEY) != 1 and _number(r.get("epoch"))]
    done.metrics_logged += _log_missing_metrics(client, log.run_id, epochs)
    if run.info.status not in tracking.ACTIVE and tracking.OUTCOME_TAG in run.data.tags:
        return
    if last.get(COMPLETE_KEY) == 1 and saved is not None and plan is not None:
        done.models_logged += not client.list_artifacts(log.run_id, "model")
        epoch = int(last["epoch"])
        log_final(log, plan, saved.state["model"], {"final_val_acc": float(last["val_acc"])}, epoch)
    else:
        status, outcome, reason = _ending(trial.status, last)
        tracking.end_run(client, str(log.run_id), status, outcome, reason)
    done.runs_ended += 1


def _find_or_create_run(log: RunLogger, record: SearchRecord, trial: Any, known: str | None, done: Reconciled) -> Any:
    """The trial's run: the one its checkpoint names (if this server has it under this search), else the
    one tagged with its trial id, else a new one."""
    client = log.client
    run = _run_of_search(client, known, record.parent_run_id) if known else None
    if run is None:
        found = tracking.find_trial_run(client, record.experiment_id, record.parent_run_id, trial.trial_id)
        run = client.get_run(found) if found else None
    if run is None:
        created = tracking.create_trial_run(client, record.experiment_id, record.parent_run_id, trial.trial_id,
                                            str(trial))  # fmt: skip
        run = client.get_run(created)
        done.runs_created += 1
    log.run_id = run.info.run_id
    return run


def _run_of_search(client: Any, run_id: str, parent_id: str) -> Any:
    """Run `run_id` when this server has it as a child of `parent_id`, else None."""
    try:
        run = client.get_run(run_id)
    except MlflowException:  # not on this server (a fresh database)
        return None
    return run if run.data.tags.get(tracking.PARENT_TAG) == parent_id else None


def _log_missing_metrics(client: Any, run_id: str | None, epochs: list[dict[str, float]]) -> int:
    """Log the (metric, epoch) values the run lacks; return how many."""
    keys = sorted({k for metrics in epochs for k in metrics})
    logged = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
    missing: dict[int, dict[str, float]] = {}
    for metrics in epochs:
        step = int(metrics.get("epoch", 0))
        for key, value in metrics.items():
            if math.isfinite(value) and step not in logged[key]:
                missing.setdefault(step, {})[key] = value
                logged[key].add(step)
    for step, values in sorted(missing.items()):
        tracking.log_metrics(client, str(run_id), values, step=step)
    return sum(len(v) for v in missing.values())


def _ending(tune_status: str, last: dict[str, Any]) -> tuple[str, str, str]:
    """(MLflow status, outcome tag, reason) of a trial that did not train to the end."""
    if last.get(DIVERGED_KEY) == 1:
        return "FAILED", "diverged", "the loss became non-finite (re-logged from Tune)"
    if tune_status == "ERROR":
        return "FAILED", "failed", "the trial raised an error (retries exhausted; re-logged from Tune)"
    if tune_status == "TERMINATED":
        return "KILLED", "stopped", "stopped early by ASHA (re-logged from Tune)"
    return "KILLED", "interrupted", f"the search ended with the trial {tune_status.lower()}"


def _widths_table(plan: WidthPlan) -> str:
    from precrop.methods.plan_report import render_plan
    from precrop.nn.build import layer_table

    return render_plan(plan, layer_table(plan.arch, plan.num_classes, plan.input_shape[1]))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _filesystem(path: str) -> tuple[Any, str]:
    """A pyarrow filesystem and the path on it (local paths and URIs such as s3://, as Tune uses)."""
    import pyarrow.fs

    if "://" in path:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        return fs, str(inner)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())
