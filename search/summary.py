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
        print("export one:  precrop export RUN_ID --format onnx --tracking-uri " + handle.tracking_uri)
    else:
        print("no trial trained to the end: the front is empty")
    return front


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
