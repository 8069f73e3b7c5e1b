"""End of a search: MLflow made to agree with Tune, the front from MLflow, test accuracy of its members,
tags, plot, CSV and a table (or a study's tables)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from precrop.textui import format_table
from search.record import tracking
from search.record.reconcile import reconcile_search
from search.record.records import SearchRecord
from search.results.pareto import (
    TrialRecord,
    front_rows,
    front_tag_updates,
    pareto_front,
    plot_front,
    record_from_run,
    to_csv,
)
from search.run.latency import retime_search
from search.spec.config import ExperimentConfig
from search.spec.grid import Study
from search.spec.schema import Artifact, Metric, Outcome, RunStatus, Tag
from search.spec.space import data_request
from search.studies.study import cell_from_run, publish

if TYPE_CHECKING:
    from mlflow import MlflowClient


NOTHING_TRAINED = "no trial trained to the end"


def finish_search(
    client: MlflowClient, record: SearchRecord, config: ExperimentConfig, study: Study | None, by_hand: bool = False
) -> bool:
    """A search's end: re-log what trials could not (search/record/reconcile.py), re-time the latency on the idle
    machine, log and print the front (or the study's table), and end the parent run: FINISHED, or FAILED
    when no trial trained to the end (then it returns False: the search produced no model).

    `by_hand` (`precrop reconcile`): every line names the search, and the reconciliation always reports.
    """
    prefix = f"{record.name}: " if by_hand else ""
    done = reconcile_search(client, record)
    if by_hand or done.runs_created or done.metrics_logged or done.models_logged:
        print(prefix + done.describe(), flush=True)
    retimed = retime_search(client, config, record.experiment_id, record.parent_run_id)  # before the front
    if retimed.runs:
        print(prefix + retimed.describe(), flush=True)
    if study is None:
        summarize(client, config, record)
    else:
        summarize_study(client, config, record, study)
    trained = any(r.data.tags.get(Tag.OUTCOME) == Outcome.COMPLETED
                  for r in tracking.trial_runs(client, record.experiment_id, record.parent_run_id))  # fmt: skip
    if trained:
        tracking.end_parent_run(client, record.parent_run_id, RunStatus.FINISHED)
    else:
        tracking.end_parent_run(client, record.parent_run_id, RunStatus.FAILED, NOTHING_TRAINED)
    return trained


def summarize(client: MlflowClient, config: ExperimentConfig, record: SearchRecord) -> list[TrialRecord]:
    """Compute, log and print the Pareto front of the search `record`; return the front."""
    cost = config.objectives.cost
    records = [record_from_run(r) for r in tracking.trial_runs(client, record.experiment_id, record.parent_run_id)]
    records, over = _apply_limits(client, config, records)
    front = pareto_front(records, cost)
    if front:
        front = _with_test_accuracy(client, config, front)
    front_ids = {r.run_id for r in front}
    records = [next((f for f in front if f.run_id == r.run_id), r) for r in records]
    for run_id, value in front_tag_updates(records, front).items():
        tracking.set_tags(client, run_id, {Tag.PARETO: value})
    counts: dict[str, int] = {
        Metric.TRIALS: len(records),
        Metric.TRIALS_COMPLETED: sum(r.completed for r in records),
        Metric.TRIALS_STOPPED: sum(r.outcome == Outcome.STOPPED for r in records),
        Metric.TRIALS_FAILED: sum(r.outcome in (Outcome.FAILED, Outcome.DIVERGED) for r in records),
        Metric.PARETO_SIZE: len(front),
    }
    if config.constraints.limits():
        counts[Metric.TRIALS_OVER_LIMIT] = len(over)
    tracking.log_metrics(client, record.parent_run_id, counts, step=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        title = f"{record.name}: val accuracy vs {cost}"
        (folder / Artifact.PARETO_PNG).write_bytes(plot_front(records, front, cost, title))
        (folder / Artifact.PARETO_CSV).write_text(to_csv(records, front_ids))
        (folder / Artifact.PARETO_JSON).write_text(json.dumps([dataclasses.asdict(r) for r in front], indent=2) + "\n")
        tracking.log_artifacts(client, record.parent_run_id, tmp)
    print()
    print(f"{counts[Metric.TRIALS]} trials: {counts[Metric.TRIALS_COMPLETED]} completed, "
          f"{counts[Metric.TRIALS_STOPPED]} stopped early by ASHA, {counts[Metric.TRIALS_FAILED]} failed")  # fmt: skip
    if config.constraints.limits():
        limits = ", ".join(f"{name} <= {limit:g}" for name, limit in config.constraints.limits().items())
        print(f"{len(over)} of {counts[Metric.TRIALS_COMPLETED]} completed trials over a limit ({limits}): "
              "not on the front")  # fmt: skip
    if front:
        print(f"Pareto front (val accuracy vs {cost}), cheapest first:")
        print(format_table(*front_rows(front)))
        uri = tracking.redact_uri(record.tracking_uri)
        print(f"export one:  precrop export RUN_ID --format onnx --tracking-uri {uri}")
    else:
        print("no trial trained to the end: the front is empty")
    for line in optuna_hint(record):
        print(line)
    return front


def _apply_limits(
    client: MlflowClient, config: ExperimentConfig, records: list[TrialRecord]
) -> tuple[list[TrialRecord], dict[str, list[str]]]:
    """Check each completed trial against the config's hard limits (latency: the quiet re-timed value), tag
    its run `precrop.within_limits`, and return the records marked, with the limits each one exceeds."""
    limits = config.constraints.limits()
    if not limits:
        return records, {}
    over = {r.run_id: exceeded for r in records if r.completed and (exceeded := r.over_limits(limits))}
    for r in records:
        if r.completed:
            tracking.set_tags(client, r.run_id, {Tag.WITHIN_LIMITS: str(r.run_id not in over).lower()})
    return [dataclasses.replace(r, within_limits=r.run_id not in over) for r in records], over


def optuna_hint(record: SearchRecord) -> list[str]:
    """How to open the search's stored Optuna study (every trial) with optuna-dashboard and the optuna CLI;
    nothing when the study was kept in memory."""
    if record.optuna_storage is None or record.optuna_study is None:
        return []
    storage, name = shlex.quote(record.optuna_storage), shlex.quote(record.optuna_study)
    return [
        f"Optuna study {record.optuna_study} (every trial; optuna-dashboard is `pip install optuna-dashboard`):",
        f"  optuna-dashboard {storage}    then browse http://127.0.0.1:8080",
        f"  optuna best-trials --study-name {name} --storage {storage}",
    ]


def summarize_study(client: MlflowClient, config: ExperimentConfig, record: SearchRecord, study: Study) -> None:
    """A study's end: test accuracy of every completed cell, then its table, CSV and plot (logged,
    printed, and written to the study's `out_dir` when it has one)."""
    runs = tracking.trial_runs(client, record.experiment_id, record.parent_run_id)
    completed = [r for r in (record_from_run(run) for run in runs) if r.completed]
    tested = {r.run_id: r.test_acc for r in _with_test_accuracy(client, config, completed)}
    cells = [dataclasses.replace(cell_from_run(run, study, client), test_acc=tested.get(run.info.run_id))
             for run in runs if run.info.run_id in tested]  # fmt: skip
    title = f"{record.name}: {config.model.arch} on {config.data.name}, {config.space.epochs} epochs"
    heading = f"\n{len(cells)} of {study.trials} cells trained to the end ({study.kind} study):"
    publish(client, record.parent_run_id, cells, study, title, heading)


def _with_test_accuracy(client: MlflowClient, config: ExperimentConfig, front: list[TrialRecord]) -> list[TrialRecord]:
    """Evaluate each front member's final weights on the test split and log `test_acc` to its run."""
    import torch

    from search.record.models import load_run_model
    from trainers.batches import make_batches
    from trainers.load import load_dataset
    from trainers.loop import evaluate
    from trainers.memory import release_freed_memory

    loaded = load_dataset(data_request(config, "test"))
    if loaded.test is None:
        return front
    updated = []
    for record in front:
        _, model = load_run_model(client, record.run_id)
        batches = make_batches(loaded.test, loaded, next(model.parameters()).device, 512, True, 0)
        accuracy = evaluate(model.to(memory_format=torch.channels_last), batches)["accuracy"]
        tracking.log_metrics(client, record.run_id, {Metric.TEST_ACC: accuracy}, step=0)
        updated.append(dataclasses.replace(record, test_acc=accuracy))
    release_freed_memory()  # the models and their activations: a study's driver evaluates many fronts
    return updated
