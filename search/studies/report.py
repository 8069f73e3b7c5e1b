"""`precrop study KIND CONFIG --report`: remake a finished study's tables from MLflow, without training.

The study is the latest FINISHED parent run of the config (tag `precrop.config_name`) and kind (tag
`precrop.study`) in the config's MLflow experiment. Its grid comes back from its child runs (the budgets
and seeds they logged; the studied values from the kind, or the saved config's allocators), its cells
from the children that trained to the end (their logged `test_acc`, and the objective of their plan).
The tables are printed, logged to that parent run again (replacing study.md, study.csv, paired.csv and
study.png) and written to `--out`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from precrop.errors import UserError
from precrop.fileio import check_writable_dir
from search.record import tracking
from search.results.pareto import TrialRun
from search.spec.config import ExperimentConfig
from search.spec.grid import GRANULARITY, MAPPING_VARIANTS, Study
from search.spec.locations import tracking_uri_of
from search.spec.schema import Param, Tag
from search.studies.cells import Cell
from search.studies.study import cell_from_run, publish

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


def run_study_report(config: ExperimentConfig, kind: str, out_dir: str | None) -> int:
    """Find the latest finished `kind` study of `config` in MLflow; print, log and write its tables."""
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
    uri = tracking.resolve_tracking_uri(tracking_uri_of(config))
    client = tracking.client_for(uri, create=False)
    experiment = tracking.experiment_id(client, config.experiment_name, create=False)
    parent = latest_finished_study(client, experiment, config.name, kind)
    runs = tracking.trial_runs(client, experiment, parent.info.run_id)
    study = study_of_runs(kind, runs, _saved_config(parent), out_dir)
    cells = finished_cells(runs, study, client)
    heading = (f"{parent.data.tags.get(Tag.SEARCH, parent.info.run_id)} (parent run {parent.info.run_id}): "
               f"{len(cells)} of {study.trials} cells trained to the end ({kind} study):")  # fmt: skip
    publish(client, parent.info.run_id, cells, study, _title(parent), heading)
    return 0


def latest_finished_study(client: MlflowClient, experiment: str, config_name: str, kind: str) -> Run:
    """The newest FINISHED parent run of a `kind` study of config `config_name` (UserError when none)."""
    found = tracking.latest_parent_run(client, experiment, {Tag.CONFIG_NAME: config_name, Tag.STUDY: kind},
                                       finished=True)  # fmt: skip
    if found is None:
        raise UserError(
            f"no finished {kind} study of config {config_name!r} at {tracking.redact_uri(client.tracking_uri)} "
            "(one that stopped early: run `precrop reconcile` on its Tune directory first)"
        )
    return found


def study_of_runs(kind: str, runs: list[Run], saved: dict[str, Any], out_dir: str | None) -> Study:
    """The study's grid as its child runs logged it (budgets, seeds) and its kind (values)."""
    if not runs:
        raise UserError(f"the {kind} study has no trial runs")
    dimension = Param.VARIANT if kind == "mapping" else Param.ALLOCATOR
    seen = list(dict.fromkeys(r.data.params[dimension] for r in runs if dimension in r.data.params))
    if kind == "granularity":
        values: tuple[str, ...] = GRANULARITY
    elif kind == "mapping":
        values = MAPPING_VARIANTS
    else:
        listed = [str(a) for a in saved.get("space", {}).get("allocators", [])]
        values = tuple(dict.fromkeys(listed + seen))
    budgets = sorted({float(r.data.params[Param.BUDGET]) for r in runs if Param.BUDGET in r.data.params})
    seeds = sorted({int(r.data.params[Param.SEED]) for r in runs if Param.SEED in r.data.params})
    return Study(kind, dimension, values, tuple(budgets), tuple(seeds), out_dir)


def finished_cells(runs: list[Run], study: Study, client: MlflowClient) -> list[Cell]:
    """Cells of the child runs that trained to the end (outcome `completed`)."""
    return [cell_from_run(r, study, client) for r in runs if TrialRun.of(r).completed]


def _saved_config(parent: Run) -> dict[str, Any]:
    """The config the study ran with, as its parent run saved it (empty when the tag is missing)."""
    try:
        saved = json.loads(parent.data.tags.get(Tag.CONFIG, "{}"))
    except json.JSONDecodeError:
        return {}
    return saved if isinstance(saved, dict) else {}


def _title(parent: Run) -> str:
    """The plot's title, as the study's end wrote it."""
    saved = _saved_config(parent)
    name = parent.data.tags.get(Tag.SEARCH, parent.info.run_id)
    arch = saved.get("model", {}).get("arch", "?")
    data = saved.get("data", {}).get("name", "?")
    return f"{name}: {arch} on {data}, {saved.get('space', {}).get('epochs', '?')} epochs"
