"""Studies: the grid they build, their tables (paired statistics, the realized SynExp objective), the
report remade from MLflow, and real runs on digits (granularity, baselines)."""

from __future__ import annotations

import csv
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from precrop.methods.base import Probe
from precrop.methods.registry import realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import AllocationRequest, dense_plan
from precrop.width.plan import WidthPlan
from search.cli import main
from search.record import tracking
from search.record.models import load_run_model
from search.record.tracking import open_parent_run
from search.spec.config import ConfigError
from search.spec.grid import GRANULARITY, make_study
from search.spec.parse import parse_config
from search.spec.schema import Outcome
from search.studies.cells import Cell
from search.studies.stats import paired_difference, paired_rows, reference_of, seed_differences
from search.studies.study import cell_from_run, plan_objective, study_space, summary_rows
from tests.search.conftest import TINY_CONFIG, run_precrop, search_runs, write_config

# Student t quantiles t_{0.975, df}, from printed tables (independent of scipy)
T_975 = {1: 12.706204736174698, 2: 4.302652729749464}


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
    assert header[0] == "granularity" and header[4] == "sum log d"
    by_label = {row[0]: row for row in rows}
    assert set(by_label) == {"channel", "weight"}
    assert by_label["channel"][4:] == ["-", "2.00", "2/2", "0.5500 +- 0.0707", "0.5000 +- 0.0283"]
    assert by_label["weight"][6:] == ["1/2", "0.4000", "-"]
    with_objective = [Cell("synexp", 0.3, s, 0.5, 0.5, 0.29, 0.28, 1.0, objective=-20.0 - s) for s in (0, 1)]
    assert summary_rows(with_objective, study)[1][0][4] == "-20.50"
    baselines = make_study("baselines", [0.3], 2, allocators=["synexp", "synexp_weight"])
    assert sorted(row[0] for row in summary_rows(cells, baselines)[1]) == ["synexp", "synexp_weight"]


def test_paired_difference_is_the_student_t_interval_of_the_mean() -> None:
    differences = [0.05, 0.06, 0.02]
    mean = sum(differences) / 3  # 0.04333...
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)  # 0.020817
    stat = paired_difference(differences)
    assert stat.n == 3 and stat.mean == pytest.approx(0.0433333333)
    assert stat.low == pytest.approx(mean - T_975[2] * sd / math.sqrt(3)) == pytest.approx(-0.0083786, abs=1e-6)
    assert stat.high == pytest.approx(mean + T_975[2] * sd / math.sqrt(3)) == pytest.approx(0.0950453, abs=1e-6)
    one = paired_difference([0.1])
    assert (one.n, one.mean, one.low, one.high) == (1, 0.1, None, None)
    assert paired_difference([]).mean is None


def _cell(value: str, seed: int, test: float | None, val: float = 0.5, budget: float = 0.3) -> Cell:
    return Cell(value, budget, seed, val, test, 0.3, 0.3, 1.0)


def test_pairs_are_matched_by_seed_and_a_missing_cell_drops_only_its_pair() -> None:
    study = make_study("baselines", [0.3], 3, allocators=["synexp", "uniform", "erk"])
    assert (
        reference_of(study) == "uniform" and reference_of(make_study("baselines", [0.3], 1, allocators=["erk"])) is None
    )
    assert reference_of(make_study("granularity", [0.3], 1)) == "synexp"
    assert reference_of(make_study("mapping", [0.3], 1)) == "gp"
    cells = [  # listed out of seed order; uniform has no seed-1 cell, erk no test accuracy for seed 2
        _cell("synexp", 2, 0.56), _cell("uniform", 0, 0.50), _cell("synexp", 0, 0.55), _cell("synexp", 1, 0.90),
        _cell("uniform", 2, 0.54), _cell("erk", 0, 0.40, val=0.45), _cell("erk", 2, None, val=0.60),
        _cell("synexp", 0, 0.99, budget=0.5),  # another budget: never paired with 0.3
    ]  # fmt: skip
    assert seed_differences(cells, "synexp", "uniform", 0.3, "test_acc") == pytest.approx([0.05, 0.02])
    header, rows = paired_rows(cells, study, str)
    assert header == ["allocator", "budget", "n pairs", "test acc - uniform", "95% CI", "val acc - uniform", "95% CI"]
    half = T_975[1] * statistics.stdev([0.05, 0.02]) / math.sqrt(2)
    assert rows[0][:4] == ["synexp", "0.3", 2, "+0.0350"]
    assert rows[0][4] == f"[{0.035 - half:+.4f}, {0.035 + half:+.4f}]"
    # erk: two seed pairs, but one test accuracy is missing: the test difference has one pair and no CI
    half = T_975[1] * statistics.stdev([-0.05, 0.10]) / math.sqrt(2)  # val: 0.45 - 0.5, 0.60 - 0.5
    assert rows[1] == [
        "erk",
        "0.3",
        2,
        "-0.1000 (n=1)",
        "n/a",
        "+0.0250",
        f"[{0.025 - half:+.4f}, {0.025 + half:+.4f}]",
    ]
    assert len(rows) == 2


@pytest.fixture(scope="module")
def granularity_plans() -> dict[str, WidthPlan]:
    """SynExp's density vector at 0.3 MACs realized as channels, weights and filters (ResNet-20 on 8x8)."""
    table = layer_table("cifar_resnet20", 10, 8)
    plans = {}
    for name in GRANULARITY:
        probe = Probe(build_from_plan(dense_plan(table), seed=0), (), 0)
        plans[name] = realize(name, table, AllocationRequest(macs=0.3), probe).plan
    return plans


def test_the_realized_objective_is_the_same_density_vector_at_every_granularity(
    granularity_plans: dict[str, WidthPlan],
) -> None:
    channel = granularity_plans["synexp"]
    weight, filters = granularity_plans["synexp_weight"], granularity_plans["synexp_filter"]
    table = layer_table("cifar_resnet20", 10, 8)
    kept = {x.name: x.weight_count(table.full_widths(channel.widths)) / x.weight_count(table.base_widths)
            for x in table.layers if x.name in weight.densities}  # fmt: skip
    assert plan_objective(channel) == pytest.approx(sum(math.log(d) for d in kept.values()))
    assert plan_objective(weight) == pytest.approx(sum(math.log(d) for d in weight.densities.values()))
    assert plan_objective(weight) == pytest.approx(plan_objective(channel), abs=1e-6)
    assert plan_objective(filters) == pytest.approx(plan_objective(channel), abs=0.1)
    assert plan_objective(channel) < -5  # a real cut, not the dense model (0)


ACCURACIES = {  # (test, val) by arm and seed; synexp_filter's seed 1 failed
    "synexp": {0: (0.50, 0.40), 1: (0.52, 0.41), 2: (0.54, 0.42)},
    "synexp_weight": {0: (0.55, 0.40), 1: (0.58, 0.43), 2: (0.56, 0.44)},
    "synexp_filter": {0: (0.49, 0.39), 2: (0.57, 0.45)},
}


def _fake_study(client: MlflowClient, experiment: str, plans: dict[str, WidthPlan], folder: Path) -> str:
    """A finished granularity study as the driver and trials log it, without training: its parent run id."""
    shown = parse_config(_tiny_study_config(["synexp"])).to_dict()
    parent = open_parent_run(client, experiment, "tinystudy-granularity-x", "/nowhere", shown, "granularity")
    (folder / "plan").mkdir(parents=True, exist_ok=True)
    for value, seeds in ACCURACIES.items():
        (folder / "plan" / "plan.json").write_text(plans[value].to_json())
        for seed in (0, 1, 2):
            run = tracking.create_trial_run(client, experiment, parent, f"{value}-{seed}", f"{value}-{seed}")
            tracking.log_params(client, run, {"allocator": value, "budget": 0.3, "seed": seed,
                                              "granularity": plans[value].granularity})  # fmt: skip
            tracking.log_metrics(client, run, {"macs_fraction": 0.29, "params_fraction": 0.3, "latency_ms": 1.0}, 0)
            client.log_artifacts(run, str(folder / "plan"), artifact_path="plan")
            if seed not in seeds:
                tracking.end_run(client, run, Outcome.FAILED)
                continue
            test, val = seeds[seed]
            tracking.log_metrics(client, run, {"final_val_acc": val, "test_acc": test}, step=1)
            tracking.end_run(client, run, Outcome.COMPLETED)
    client.set_terminated(parent, status="FINISHED")
    return parent


def test_report_remakes_the_tables_of_the_latest_finished_study_from_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    granularity_plans: dict[str, WidthPlan],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_config(tmp_path, _tiny_study_config(["synexp"]), "tiny.yaml")
    args = ["study", "granularity", "tiny.yaml", "--report", "--set", f"mlflow.tracking_uri={uri}"]
    assert main(args) == 2  # --report only reads: a missing database is reported, not created
    assert capsys.readouterr().err.startswith(f"precrop: error: no MLflow tracking store at {tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()
    MlflowClient(uri).search_experiments()  # an empty database
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == "precrop: error: no MLflow experiment named 'tinystudy'"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tinystudy", artifact_location=str(tmp_path / "artifacts"))
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("precrop: error: no finished granularity study of config 'tinystudy'")
    shown = parse_config(_tiny_study_config(["synexp"])).to_dict()
    older = open_parent_run(client, experiment, "older", "/nowhere", shown, "granularity")
    client.set_terminated(older, status="FINISHED")
    parent = _fake_study(client, experiment, granularity_plans, tmp_path / "staging")
    open_parent_run(client, experiment, "unfinished", "/nowhere", shown, "granularity")  # newest, still RUNNING
    open_parent_run(client, experiment, "other-kind", "/nowhere", shown, "mapping")
    client.set_terminated(client.search_runs([experiment], "tags.`precrop.search` = 'other-kind'")[0].info.run_id)

    assert main([*args, "--out", "result"]) == 0
    out = capsys.readouterr().out
    assert f"tinystudy-granularity-x (parent run {parent}): 8 of 9 cells trained to the end" in out
    main_table, paired_table = out.split("paired by seed, difference to channel")
    rows = {line.split()[0]: line.split() for line in main_table.splitlines()[3:] if line.strip()}
    objectives = {name: float(rows[name][4]) for name in ("weight", "filter", "channel")}
    assert objectives["weight"] == pytest.approx(objectives["channel"], abs=0.01)
    assert objectives["filter"] == pytest.approx(objectives["channel"], abs=0.1)
    assert rows["filter"][6] == "2/3"
    sd = statistics.stdev([0.05, 0.06, 0.02])
    half = T_975[2] * sd / math.sqrt(3)
    shown = {r[0]: r for r in (re.split(r"\s{2,}", line.strip()) for line in paired_table.splitlines())}
    ci = f"[{0.043333 - half:+.4f}, {0.043333 + half:+.4f}]"
    assert shown["weight"][:6] == ["weight", "0.3", "3", "+0.0433", ci, "+0.0133"]
    with open(tmp_path / "result" / "paired.csv") as handle:
        paired = {r["value"]: r for r in csv.DictReader(handle)}
    assert set(paired) == {"synexp_weight", "synexp_filter"} and paired["synexp_filter"]["pairs"] == "2"
    assert float(paired["synexp_filter"]["test_acc_mean_diff"]) == pytest.approx(0.01)
    half = T_975[1] * statistics.stdev([-0.01, 0.03]) / math.sqrt(2)
    assert float(paired["synexp_filter"]["test_acc_ci_high"]) == pytest.approx(0.01 + half)
    assert float(paired["synexp_weight"]["val_acc_mean_diff"]) == pytest.approx(0.04 / 3)  # 0.00, 0.02, 0.02
    markdown = (tmp_path / "result" / "study.md").read_text()
    assert "| filter | 0.3 | 2 | +0.0100 |" in markdown and "| sum log d |" in markdown
    logged = {a.path for a in client.list_artifacts(parent)}
    assert {"study.md", "study.csv", "paired.csv", "study.png"} <= logged

    # what the study's own end uses: the plan read back through the run's artifact URI, no client
    study = make_study("granularity", [0.3], 3)
    child = tracking.trial_runs(client, experiment, parent)[0]
    cell = cell_from_run(child, study)
    assert cell.objective == pytest.approx(plan_objective(granularity_plans[cell.value]))


def _tiny_study_config(allocators: list[str]) -> dict[str, Any]:
    space = {**TINY_CONFIG["space"], "allocators": allocators, "epochs": 1, "lr": [0.05, 0.05]}
    return {**TINY_CONFIG, "name": "tinystudy", "space": space, "asha": {"enabled": False}}


def _children(folder: Path) -> tuple[MlflowClient, Any, list[Any]]:
    runs = search_runs(folder, "tinystudy")
    assert len(runs.parents) == 1
    return runs.client, runs.parents[0], runs.children


@pytest.mark.ray
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
    assert all(float(r["objective"]) < -5 for r in rows)  # read back from each run's logged plan
    markdown = (tmp_path / "result" / "study.md").read_text()
    assert all(f"| {g} | 0.3 |" in markdown for g in ("weight", "filter", "channel"))
    assert "paired by seed, difference to channel" in markdown and "| weight | 0.3 | 1 |" in markdown
    assert "paired by seed, difference to channel" in out.stdout
    assert (tmp_path / "result" / "study.png").read_bytes()[:4] == b"\x89PNG"

    client, parent, children = _children(tmp_path)
    assert parent.data.tags["precrop.study"] == "granularity" and len(children) == 3
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"study.csv", "study.md", "study.png", "paired.csv"} <= logged
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


@pytest.mark.ray
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
        "precrop: error: --budgets: synexp (internal mapping) cannot allocate at 0.3: macs budget 0.3 is below "
        "what the minimum widths of the 'internal' mapping (it keeps residual widths at base) allow (0.3056 of "
        "base at min width 8, divisor 8)"
    ]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
