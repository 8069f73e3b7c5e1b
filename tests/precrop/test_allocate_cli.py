"""`precrop allocate`: table and JSON output, saved plans, and one-line errors that write nothing."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from precrop.cli import main
from precrop.methods.base import Probe
from precrop.methods.masks import full_weight_cost, kept_counts, prunable_layers
from precrop.methods.registry import METHODS, realize
from precrop.methods.saliency import SynFlowPruner
from precrop.nn.build import build_from_plan
from precrop.width.allocate import AllocationRequest, dense_plan
from precrop.width.plan import WidthPlan
from tests.precrop.conftest import cached_table

DATA_FREE = tuple(name for name, m in METHODS.items() if not m.needs_data)


@pytest.fixture
def quick_synflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """SynFlow with 2 rounds: these tests are about the command (test_saliency.py runs the full 100)."""
    monkeypatch.setitem(METHODS, "synflow", dataclasses.replace(METHODS["synflow"], factory=partial(SynFlowPruner, 2)))


def test_json_output_has_the_documented_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "plan.json"
    assert main(["allocate", "cifar_resnet20", "--macs", "0.5", "--json", "-o", str(out_file)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"widths", "counted", "base", "solve_ms"} <= set(data)
    assert data["base"] == {"params": 269_722, "macs": 40_551_040}
    assert data["counted"]["macs"] <= 0.5 * 40_551_040
    assert WidthPlan.from_json(out_file.read_text()).to_dict() == data
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_uniform_allocator_scales_every_prunable_group_alike(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", "uniform", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["allocator"] == "uniform" and data["counted"]["macs"] <= 0.5 * 40_551_040
    multiplier = data["options"]["multiplier"]
    assert 0.70 < multiplier < 0.72  # MACs go roughly with the multiplier squared: sqrt(0.5) = 0.707
    assert data["counted"]["macs"] >= 0.98 * 0.5 * 40_551_040  # filled to the budget, not left under it
    # every group within one divisor step of multiplier x base (16 -> 8 or 16, 32 -> 16 or 24, 64 -> 40 or 48)
    for group, base in (("conv1", 16), ("layer2.0.conv2", 32), ("layer3.0.conv2", 64)):
        assert abs(data["widths"][group] - multiplier * base) < 8


def test_table_output_shows_base_and_new_widths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "efficientnet_b0", "--scale", "1", "--params", "0.8", "--expand", "2"]) == 0
    text = capsys.readouterr().out
    assert "group" in text and "base" in text and "new" in text
    assert "of base" in text and "ms" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--macs", "0"], "positive"),
        (["--macs", "-1"], "positive"),
        (["--macs", "1.5"], "PreCrop budgets"),
        (["--macs", "nan"], "positive"),
        (["--params", "0.0001"], "minimum widths"),
        (["--macs", "0.5", "--variant", "nope"], "unknown variant 'nope'"),
        (["--macs", "0.5", "--objective", "paths"], "unknown objective 'paths'; choose one of layer, path"),
        (["--macs", "0.5", "--scale", "0.5"], "not both"),
        (["--expand", "1e9", "--scale", "1e8"], "expand must be in [1, 16]"),  # hung building 1e9-wide choices
        (["--macs", "0.5", "--allocator", "erk", "--seed", "-1"], "expected a seed from 0 to 4294967295"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args: list[str], needle: str, tmp_path: Path) -> None:
    out_file = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "precrop.cli", "allocate", "cifar_resnet20", *args, "-o", str(out_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("quick_synflow")
@pytest.mark.parametrize("name", DATA_FREE)
def test_every_data_free_method_meets_the_budget(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", name, "--json"]) == 0
    plan = WidthPlan.from_json(capsys.readouterr().out)
    assert plan.allocator == name
    assert plan.effective.macs <= 0.5 * plan.base.macs
    assert plan.masked == METHODS[name].masks


@pytest.mark.usefixtures("quick_synflow")
@pytest.mark.parametrize("name", ["synflow", "synexp_filter"])
def test_printed_densities_are_those_of_the_masks(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "plan.json"
    argv = ["allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", name, "--seed", "3", "-o", str(out_file)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    table = cached_table("cifar_resnet20")
    probe = Probe(build_from_plan(dense_plan(table), seed=3), (), 3)
    result = realize(name, table, AllocationRequest(macs=0.5), probe)
    kept = kept_counts(result.masks)
    rows = _layer_rows(text, set(kept))
    assert list(rows) == [layer.name for layer in prunable_layers(table)]
    for layer_name, (printed_kept, total, density) in rows.items():
        mask = result.masks[layer_name]
        assert int(printed_kept.replace(",", "")) == kept[layer_name] and int(total.replace(",", "")) == mask.numel()
        assert float(density) == pytest.approx(kept[layer_name] / mask.numel(), abs=5e-4)
    plan = WidthPlan.from_json(out_file.read_text())
    assert plan.densities == result.plan.densities
    # the kept weights are the plan's theoretical params less what masks never touch (biases, norms)
    assert plan.sparse is not None
    assert sum(kept.values()) == plan.sparse.params - (plan.base.params - full_weight_cost(table)["params"])
    assert f"theoretical params {plan.sparse.params:,} ({plan.sparse.params / plan.base.params:.4f} of base)" in text
    assert f"MACs {plan.sparse.macs:,} ({plan.sparse.macs / plan.base.macs:.4f} of base)" in text
    assert "seed 3" in text and f"plan written to {out_file}" in text


def _layer_rows(text: str, names: set[str]) -> dict[str, list[str]]:
    """The printed layer table: layer name -> [kept, total, density] as printed."""
    rows = (line.split() for line in text.splitlines())
    return {cells[0]: cells[1:] for cells in rows if cells and cells[0] in names}


def test_data_driven_method_without_data_loading_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", "snip"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "snip scores the model on training batches" in err[0] and "--dataset" in err[0]


@pytest.mark.parametrize(("arch", "allocator", "noted"), [("mobilenetv2_cifar", "synexp", True),
                                                          ("mobilenetv2_cifar", "uniform", False),
                                                          ("cifar_resnet20", "synexp", False)])  # fmt: skip
def test_synexp_on_depthwise_nets_points_at_the_measured_study(
    arch: str, allocator: str, noted: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CIFAR MobileNetV2 study found uniform scaling as good or better there: the table says so (not --json)."""
    assert main(["allocate", arch, "--macs", "0.3", "--allocator", allocator]) == 0
    out = capsys.readouterr().out
    assert ("compare with --allocator uniform" in out) == noted
    assert main(["allocate", arch, "--macs", "0.3", "--allocator", allocator, "--json"]) == 0
    json.loads(capsys.readouterr().out)  # the JSON stays pure
