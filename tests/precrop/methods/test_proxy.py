"""The measured proxy (SynFlow's path score of a cropped network against its dense one) and `precrop synexp`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from precrop.cli import main
from precrop.methods.proxy import ProxyError, log_path_score, measure_plan
from precrop.methods.registry import realize
from precrop.nn.surgery import resize_to_widths
from precrop.nn.tracing import trace_layer_table
from precrop.width.allocate import AllocationRequest, SynExpAllocator, UniformAllocator
from precrop.width.objective import synexp_objective
from tests.precrop.conftest import cached_table, make_probe

pytestmark = pytest.mark.usefixtures("one_thread")


def equal_weight_chain() -> nn.Module:
    """stem 1x1 3->16, 1x1 16->32, depthwise 3x3 on the 32, pool, linear 32->10; every weight 1, no bias."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 1, bias=False), nn.Conv2d(16, 32, 1, bias=False),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10, bias=False),
    )  # fmt: skip
    for param in model.parameters():
        nn.init.ones_(param)
    return model


def test_on_an_equal_weight_chain_the_score_is_the_product_of_width_ratios() -> None:
    """Closed form: every channel carries the same value, so R scales with each cropped group's width; the path
    objective (halved: a mask is counted by its writer and its reader) predicts it exactly, the layer one does not."""
    model = equal_weight_chain()
    table = trace_layer_table(copy.deepcopy(model), "chain", 8, 10)
    widths = {"0": 8, "1": 8}  # 16 -> 8 and 32 -> 8
    assert set(table.base_widths) >= set(widths)
    cropped = resize_to_widths(copy.deepcopy(model), table, widths)
    measured = log_path_score(cropped, (3, 8, 8)) - log_path_score(model, (3, 8, 8))
    closed_form = math.log(8 / 16) + math.log(8 / 32)
    assert measured == pytest.approx(closed_form, abs=1e-12)
    assert synexp_objective(table, widths, "path") / 2 == pytest.approx(closed_form, abs=1e-12)
    assert synexp_objective(table, widths, "layer") / 2 == pytest.approx(closed_form + math.log(8 / 32) / 2)


def test_path_measures_a_nat_above_layer_and_uniform_on_mobilenetv2() -> None:
    """Issue 27's measurement at 0.3 of the MACs (2 seeds): layer -20.8, uniform -21.7, path -18.7 nats."""
    table = cached_table("mobilenetv2_cifar")
    request = AllocationRequest(macs=0.3)
    allocator = SynExpAllocator()
    plans = {
        "layer": allocator.allocate(table, request),
        "path": allocator.allocate(table, AllocationRequest(macs=0.3, objective="path")),
        "uniform": UniformAllocator().allocate(table, request),
    }
    measured = {name: measure_plan(plan, (0, 1)) for name, plan in plans.items()}
    assert measured["path"].mean >= measured["layer"].mean + 1
    assert measured["path"].mean >= measured["uniform"].mean + 1
    assert all(m.std < 0.5 for m in measured.values())
    # the path objective ranks the three plans as the measurement does; the layer objective does not
    predicted = {name: synexp_objective(table, plan.widths, "path") for name, plan in plans.items()}
    assert sorted(predicted, key=predicted.__getitem__) == sorted(measured, key=lambda n: measured[n].mean)


def test_the_proxy_refuses_masks_and_grown_groups() -> None:
    table = cached_table("cifar_resnet20")
    grown = SynExpAllocator().allocate(table, AllocationRequest(macs=1.0, expand=2.0, params=1.2))
    if all(w <= table.group(g).width for g, w in grown.widths.items()):
        pytest.skip("this budget grew no group")
    with pytest.raises(ProxyError, match="PreConfig plans that grow a group are not scored"):
        measure_plan(grown)
    masked = realize("random", table, AllocationRequest(macs=0.5), make_probe("cifar_resnet20")).plan
    with pytest.raises(ProxyError, match="plans mask weights"):
        measure_plan(masked)


def _write_plan(tmp_path: Path, request: AllocationRequest) -> Path:
    table = trace_layer_table(_resnet20(), "cifar_resnet20", 8, 10)
    path = tmp_path / "plan.json"
    path.write_text(SynExpAllocator().allocate(table, request).to_json())
    return path


def _resnet20() -> nn.Module:
    from precrop.nn.zoo import REGISTRY

    return REGISTRY.get("cifar_resnet20").build(10)


def test_synexp_command_prints_each_plan_and_uniform_at_its_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _write_plan(tmp_path, AllocationRequest(params=0.4))
    assert main(["synexp", str(plan), "--seeds", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["allocator"] for row in rows] == ["synexp", "uniform"]
    assert rows[0]["objective"] == "layer" and len(rows[0]["measured_log_r"]) == 2
    assert rows[1]["params_fraction"] == pytest.approx(rows[0]["params_fraction"], abs=0.02)
    assert all(row["measured_mean"] < 0 for row in rows)  # cropping keeps fewer paths than the dense model
    assert main(["synexp", str(plan), "--seeds", "1", "--no-uniform"]) == 0
    table = capsys.readouterr().out
    assert "measured log R/R_dense" in table and "uniform" not in table.splitlines()[2]


def test_synexp_command_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synexp", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("precrop: error: cannot read plan") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exited:  # argparse's own refusal, one line (OneLineErrorParser)
        main(["synexp", "x.json", "--seeds", "0"])
    assert exited.value.code == 2 and "--seeds: expected a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["efficientnet_b0"])
def test_gate_branches_are_traced(arch: str) -> None:
    """Each squeeze-excitation block's two convs form a gate branch; nothing else does."""
    table = cached_table(arch)
    gates = [layer.name for layer in table.layers if layer.gate]
    assert len(gates) == 32 and all(name.endswith((".fc1", ".fc2")) for name in gates)
    assert not any(layer.gate for layer in cached_table("mobilenetv2_cifar").layers)
    assert torch.get_num_threads() == 1
