"""End of a search: the front from MLflow, test accuracy of its members, tags, plot, CSV and a table."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from precrop.errors import UserError
from precrop.textui import format_table
from search import tracking
from search.config import ExperimentConfig, default_tracking_uri
from search.pareto import TrialRecord, front_rows, front_tag_updates, pareto_front, plot_front, record_from_run, to_csv


def summarize(client: Any, config: ExperimentConfig, handle: Any) -> list[TrialRecord]:
    """Compute, log and print the Pareto front of the search `handle`; return the front."""
    cost = config.objectives.cost
    records = [record_from_run(r) for r in tracking.trial_runs(client, handle.experiment_id, handle.parent_run_id)]
    front = pareto_front(records, cost)
    if front:
        front = _with_test_accuracy(client, config, front)
    front_ids = {r.run_id for r in front}
    records = [next((f for f in front if f.run_id == r.run_id), r) for r in records]
    for run_id, value in front_tag_updates(records, front).items():
        tracking.set_tags(client, run_id, {tracking.PARETO_TAG: value})
    counts = {
        "trials": len(records),
        "trials_completed": sum(r.completed for r in records),
        "trials_stopped": sum(r.outcome == "stopped" for r in records),
        "trials_failed": sum(r.outcome in ("failed", "diverged") for r in records),
        "pareto_size": len(front),
    }
    tracking.log_metrics(client, handle.parent_run_id, counts, step=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pareto.png").write_bytes(plot_front(records, front, cost, f"{handle.name}: val accuracy vs {cost}"))
        (folder / "pareto.csv").write_text(to_csv(records, front_ids))
        (folder / "pareto.json").write_text(json.dumps([dataclasses.asdict(r) for r in front], indent=2) + "\n")
        client.log_artifacts(handle.parent_run_id, tmp)
    print()
    print(f"{counts['trials']} trials: {counts['trials_completed']} completed, {counts['trials_stopped']} stopped "
          f"early by ASHA, {counts['trials_failed']} failed")  # fmt: skip
    if front:
        print(f"Pareto front (val accuracy vs {cost}), cheapest first:")
        print(format_table(*front_rows(front)))
        uri = tracking.redact_uri(handle.tracking_uri)
        print(f"export one:  precrop export RUN_ID --format onnx --tracking-uri {uri}")
    else:
        print("no trial trained to the end: the front is empty")
    return front


def summarize_study(client: Any, config: ExperimentConfig, handle: Any, study: Any) -> None:
    """A study's end: test accuracy of every completed cell, then its table, CSV and plot (logged,
    printed, and written to the study's `out_dir` when it has one)."""
    from search.study import cell_from_run, write_outputs

    runs = tracking.trial_runs(client, handle.experiment_id, handle.parent_run_id)
    completed = [r for r in (record_from_run(run) for run in runs) if r.completed]
    tested = {r.run_id: r.test_acc for r in _with_test_accuracy(client, config, completed)}
    cells = [dataclasses.replace(cell_from_run(run, study, client), test_acc=tested.get(run.info.run_id))
             for run in runs if run.info.run_id in tested]  # fmt: skip
    title = f"{handle.name}: {config.model.arch} on {config.data.name}, {config.space.epochs} epochs"
    with tempfile.TemporaryDirectory() as tmp:
        table = write_outputs(Path(tmp), cells, study, title)
        client.log_artifacts(handle.parent_run_id, tmp)
    if study.out_dir:
        write_outputs(Path(study.out_dir), cells, study, title)
    print()
    print(f"{len(cells)} of {study.trials} cells trained to the end ({study.kind} study):")
    print(table)
    if study.out_dir:
        print(f"wrote study.csv, paired.csv, study.md and study.png to {study.out_dir}")


def _with_test_accuracy(client: Any, config: ExperimentConfig, front: list[TrialRecord]) -> list[TrialRecord]:
    """Evaluate each front member's final weights on the test split and log `test_acc` to its run."""
    from search.models import load_run_model
    from trainers.batches import make_batches
    from trainers.datasets import DataRequest, load_dataset
    from trainers.loop import evaluate

    data = config.data
    request = DataRequest(data.name, data.data_dir, val_fraction=data.val_fraction, seed=config.search.seed,
                          with_test=True, image_size=data.image_size, resident=data.resident)  # fmt: skip
    loaded = load_dataset(request)
    if loaded.test is None:
        return front
    updated = []
    for record in front:
        _, model = load_run_model(client, record.run_id)
        batches = make_batches(loaded.test, loaded, next(model.parameters()).device, 512, True, 0)
        accuracy = evaluate(model.to(memory_format=_channels_last()), batches)["accuracy"]
        tracking.log_metrics(client, record.run_id, {"test_acc": accuracy}, step=0)
        updated.append(dataclasses.replace(record, test_acc=accuracy))
    return updated


def _channels_last() -> Any:
    import torch

    return torch.channels_last


def run_reconcile(args: argparse.Namespace) -> int:
    """The `precrop reconcile` command: re-log a search from Tune's records, then its summary."""
    import os

    from search.driver import SearchHandle
    from search.reconcile import read_record, reconcile_search

    record = read_record(args.search_dir)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip() or record.tracking_uri
    if ":***@" in uri:
        raise UserError("the search's tracking URI was saved without its password: pass --tracking-uri")
    tracking.bound_http_retries()
    client = tracking.client_for(uri)
    record = _with_parent_run(client, record)
    done = reconcile_search(client, record)
    print(f"{record.name}: {done.describe()}")
    from search.latency import retime_search

    retimed = retime_search(client, record.experiment_config(), record.experiment_id, record.parent_run_id)
    if retimed.runs:
        print(f"{record.name}: {retimed.describe()}")
    handle = SearchHandle(record.name, record.path, record.experiment_id, record.parent_run_id, uri)
    study = record.study_grid()
    if study is None:
        summarize(client, record.experiment_config(), handle)
    else:
        summarize_study(client, record.experiment_config(), handle, study)
    client.set_terminated(record.parent_run_id, status="FINISHED")
    return 0


def _with_parent_run(client: Any, record: Any) -> Any:
    """The record, with a new parent run (and experiment) when the server no longer has the original."""
    from mlflow.exceptions import MlflowException

    from search.driver import open_parent_run
    from search.reconcile import write_record

    try:
        client.get_run(record.parent_run_id)
        return record
    except MlflowException:
        pass
    config = record.experiment_config()
    experiment = tracking.experiment_id(client, config.experiment_name)
    kind = record.study["kind"] if record.study else None
    parent = open_parent_run(client, experiment, record.name, record.path, record.config, kind)
    print(f"note: {record.name}'s parent run is not in this MLflow; logged it again as {parent}")
    updated = dataclasses.replace(record, experiment_id=experiment, parent_run_id=parent)
    write_record(updated)
    return updated


def run_pareto(args: argparse.Namespace) -> int:
    """The `precrop pareto` command: recompute the front of an experiment from MLflow alone."""
    uri = tracking.resolve_tracking_uri(args.tracking_uri or default_tracking_uri())
    client = tracking.client_for(uri)
    experiment = tracking.experiment_id(client, args.experiment, create=False)
    parent = None
    if args.search:
        runs = client.search_runs([experiment], f"tags.`precrop.search` = '{args.search}'", max_results=1)
        if not runs:
            raise UserError(f"no search named {args.search!r} in experiment {args.experiment!r}")
        parent = runs[0].info.run_id
    records = [record_from_run(r) for r in tracking.trial_runs(client, experiment, parent)]
    front = pareto_front(records, args.cost)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in front]))
        return 0
    completed = sum(r.completed for r in records)
    print(f"{len(records)} trial runs, {completed} trained to the end; front (val accuracy vs {args.cost}):")
    print(format_table(*front_rows(front)) if front else "(empty)")
    return 0
