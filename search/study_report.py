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
import tempfile
from pathlib import Path
from typing import Any

from precrop.errors import UserError
from precrop.fileio import check_writable_dir
from search import tracking
from search.config import ExperimentConfig, tracking_uri_of
from search.driver import CONFIG_NAME_TAG, CONFIG_TAG, SEARCH_TAG, STUDY_TAG
from search.study import GRANULARITY, MAPPING_VARIANTS, Cell, Study, cell_from_run, write_outputs


def run_study_report(config: ExperimentConfig, kind: str, out_dir: str | None) -> int:
    """Find the latest finished `kind` study of `config` in MLflow; print, log and write its tables."""
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
    tracking.bound_http_retries()
    uri = tracking.resolve_tracking_uri(tracking_uri_of(config))
    client = tracking.client_for(uri)
    experiment = tracking.experiment_id(client, config.experiment_name, create=False)
    parent = latest_finished_study(client, experiment, config.name, kind)
    runs = tracking.trial_runs(client, experiment, parent.info.run_id)
    study = study_of_runs(kind, runs, _saved_config(parent), out_dir)
    cells = finished_cells(runs, study, client)
    title = _title(parent)
    with tempfile.TemporaryDirectory() as tmp:
        table = write_outputs(Path(tmp), cells, study, title)
        client.log_artifacts(parent.info.run_id, tmp)
    if out_dir:
        write_outputs(Path(out_dir), cells, study, title)
    print(f"{parent.data.tags.get(SEARCH_TAG, parent.info.run_id)} (parent run {parent.info.run_id}): "
          f"{len(cells)} of {study.trials} cells trained to the end ({kind} study):")  # fmt: skip
    print(table)
    if out_dir:
        print(f"wrote study.csv, paired.csv, study.md and study.png to {out_dir}")
    return 0


def latest_finished_study(client: Any, experiment: str, config_name: str, kind: str) -> Any:
    """The newest FINISHED parent run of a `kind` study of config `config_name` (UserError when none)."""
    query = (f"tags.`{CONFIG_NAME_TAG}` = '{_quoted(config_name)}' and tags.`{STUDY_TAG}` = '{kind}' "
             "and attributes.status = 'FINISHED'")  # fmt: skip
    runs = client.search_runs([experiment], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(
            f"no finished {kind} study of config {config_name!r} at {tracking.redact_uri(client.tracking_uri)} "
            "(one that stopped early: run `precrop reconcile` on its Tune directory first)"
        )
    return runs[0]


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")


def study_of_runs(kind: str, runs: list[Any], saved: dict[str, Any], out_dir: str | None) -> Study:
    """The study's grid as its child runs logged it (budgets, seeds) and its kind (values)."""
    if not runs:
        raise UserError(f"the {kind} study has no trial runs")
    dimension = "variant" if kind == "mapping" else "allocator"
    seen = list(dict.fromkeys(r.data.params[dimension] for r in runs if dimension in r.data.params))
    if kind == "granularity":
        values: tuple[str, ...] = GRANULARITY
    elif kind == "mapping":
        values = MAPPING_VARIANTS
    else:
        listed = [str(a) for a in saved.get("space", {}).get("allocators", [])]
        values = tuple(dict.fromkeys(listed + seen))
    budgets = sorted({float(r.data.params["budget"]) for r in runs if "budget" in r.data.params})
    seeds = sorted({int(r.data.params["seed"]) for r in runs if "seed" in r.data.params})
    return Study(kind, dimension, values, tuple(budgets), tuple(seeds), out_dir)


def finished_cells(runs: list[Any], study: Study, client: Any) -> list[Cell]:
    """Cells of the child runs that trained to the end (outcome `completed`)."""
    from search.pareto import record_from_run

    return [cell_from_run(r, study, client) for r in runs if record_from_run(r).completed]


def _saved_config(parent: Any) -> dict[str, Any]:
    """The config the study ran with, as its parent run saved it (empty when the tag is missing)."""
    try:
        saved = json.loads(parent.data.tags.get(CONFIG_TAG, "{}"))
    except json.JSONDecodeError:
        return {}
    return saved if isinstance(saved, dict) else {}


def _title(parent: Any) -> str:
    """The plot's title, as the study's end wrote it."""
    saved = _saved_config(parent)
    name = parent.data.tags.get(SEARCH_TAG, parent.info.run_id)
    arch = saved.get("model", {}).get("arch", "?")
    data = saved.get("data", {}).get("name", "?")
    return f"{name}: {arch} on {data}, {saved.get('space', {}).get('epochs', '?')} epochs"
