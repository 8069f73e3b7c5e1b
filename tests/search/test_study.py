"""Studies: the grid they build, their table, and real runs on digits (granularity, baselines)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from precrop.plan import WidthPlan
from search.config import ConfigError, parse_config
from search.models import load_run_model
from search.study import Cell, make_study, study_space, summary_rows
from tests.search.conftest import TINY_CONFIG, run_precrop, write_config


def test_study_grids_cross_values_budgets_and_seeds() -> None:
    study = make_study("mapping", [0.25, 0.5], 2)
    assert study.values == ("fit", "gp", "internal") and study.trials == 12
    space = study_space(parse_config(TINY_CONFIG), study)
    assert space["variant"] == {"grid_search": ["fit", "gp", "internal"]}
    assert space["budget"] == {"grid_search": [0.25, 0.5]} and space["seed"] == {"grid_search": [0, 1]}
    # one recipe for every cell: the geometric middle of lr [0.001, 0.3], the middle of label smoothing
    assert space["lr"] == pytest.approx((0.001 * 0.3) ** 0.5) and space["label_smoothing"] == pytest.approx(0.05)
    granularity = make_study("granularity", [0.3], 1)
    assert granularity.points() == [("synexp_weight", "", 0.3), ("synexp_filter", "", 0.3), ("synexp", "", 0.3)]
    with pytest.raises(ConfigError, match="seeds"):
        make_study("granularity", [0.3], 0)
    with pytest.raises(ConfigError, match="unknown study"):
        make_study("speed", [0.3], 1)


def test_summary_rows_average_over_seeds() -> None:
    study = make_study("granularity", [0.3], 2)
    cells = [
        Cell("synexp", 0.3, 0, 0.50, 0.48, 0.29, 0.28, 1.0),
        Cell("synexp", 0.3, 1, 0.60, 0.52, 0.29, 0.28, 3.0),
        Cell("synexp_weight", 0.3, 0, 0.40, None, 0.30, 0.31, 9.0),
    ]
    header, rows = summary_rows(cells, study)
    assert header[0] == "granularity"
    by_label = {row[0]: row for row in rows}
    assert set(by_label) == {"channel", "weight"}
    assert by_label["channel"][4:] == ["2.00", "2/2", "0.5500 +- 0.0707", "0.5000 +- 0.0283"]
    assert by_label["weight"][5:] == ["1/2", "0.4000", "-"]
    baselines = make_study("baselines", [0.3], 2, allocators=["synexp", "synexp_weight"])
    assert sorted(row[0] for row in summary_rows(cells, baselines)[1]) == ["synexp", "synexp_weight"]


def _tiny_study_config(allocators: list[str]) -> dict[str, Any]:
    space = {**TINY_CONFIG["space"], "allocators": allocators, "epochs": 1, "lr": [0.05, 0.05]}
    return {**TINY_CONFIG, "name": "tinystudy", "space": space, "asha": {"enabled": False}}


def _children(folder: Path) -> tuple[MlflowClient, Any, list[Any]]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinystudy")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("precrop.role") == "search"]
    assert len(parents) == 1
    return client, parents[0], [r for r in runs if r.data.tags.get("precrop.role") == "trial"]


def test_granularity_study_on_digits_trains_every_cell_and_keeps_masks(tmp_path: Path) -> None:
    write_config(tmp_path, _tiny_study_config(["synexp"]), "tiny.yaml")
    out = run_precrop(tmp_path, "study", "granularity", "tiny.yaml", "--budgets", "0.3", "--seeds", "1",
                      "--out", "result", timeout=400)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 of 3 cells trained to the end (granularity study)" in out.stdout
    with open(tmp_path / "result" / "study.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["value"] for r in rows) == ["synexp", "synexp_filter", "synexp_weight"]
    assert all(float(r["macs_fraction"]) <= 0.3 and float(r["test_acc"]) > 0.1 for r in rows)
    markdown = (tmp_path / "result" / "study.md").read_text()
    assert all(f"| {g} | 0.3 |" in markdown for g in ("weight", "filter", "channel"))
    assert (tmp_path / "result" / "study.png").read_bytes()[:4] == b"\x89PNG"

    client, parent, children = _children(tmp_path)
    assert parent.data.tags["precrop.study"] == "granularity" and len(children) == 3
    assert {"study.csv", "study.md", "study.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    by_allocator = {c.data.params["allocator"]: c for c in children}
    for name, granularity in (("synexp_weight", "weight"), ("synexp_filter", "filter"), ("synexp", "channel")):
        child = by_allocator[name]
        assert child.info.status == "FINISHED" and child.data.params["granularity"] == granularity
    # a masked model is saved dense, with its masked weights still exactly zero after training
    plan, model = load_run_model(client, by_allocator["synexp_weight"].info.run_id)
    assert plan.masked and plan.effective.macs <= 0.3 * plan.base.macs
    assert by_allocator["synexp_weight"].data.metrics["dense_macs"] == plan.base.macs
    for layer, density in plan.densities.items():
        weight = model.get_submodule(layer).weight
        assert int(torch.count_nonzero(weight)) == round(density * weight.numel())
    assert WidthPlan.from_json(plan.to_json()) == plan


def test_baselines_study_runs_every_kind_of_method(tmp_path: Path) -> None:
    methods = ["pfs", "prunenet", "synflow", "snip", "grasp", "erk"]
    write_config(tmp_path, _tiny_study_config(methods), "tiny.yaml")
    out = run_precrop(tmp_path, "study", "baselines", "tiny.yaml", "--budgets", "0.4", "--seeds", "1", timeout=500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{len(methods)} of {len(methods)} cells trained to the end (baselines study)" in out.stdout
    _, _, children = _children(tmp_path)
    assert sorted(c.data.params["allocator"] for c in children) == sorted(methods)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.metrics["macs_fraction"] <= 0.4
        masked = child.data.params["granularity"] != "channel"
        assert (child.data.metrics["dense_macs"] > child.data.metrics["macs"]) == masked


def test_a_cell_that_cannot_meet_its_budget_stops_the_study_before_it_starts(tmp_path: Path) -> None:
    write_config(tmp_path, _tiny_study_config(["synexp"]), "tiny.yaml")
    out = run_precrop(tmp_path, "study", "mapping", "tiny.yaml", "--budgets", "0.3", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "precrop: error: --budgets: synexp (internal mapping) cannot allocate at 0.3: "
        "channel mapping program status: infeasible"
    ]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
