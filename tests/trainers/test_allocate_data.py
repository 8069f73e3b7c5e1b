"""`precrop allocate --dataset`: data-driven methods score the search's probe batches of the data set."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import pytest

from precrop.methods.base import Probe
from precrop.methods.channel_rank import PfsAllocator
from precrop.methods.prunenet import PruneNetAllocator
from precrop.methods.registry import METHODS, realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import AllocationRequest, dense_plan
from precrop.width.plan import WidthPlan
from search.cli import main
from trainers.batches import PROBE_BATCH_SIZE, PROBE_BATCHES, probe_batches
from trainers.datasets import DataRequest
from trainers.load import load_dataset

DATA_DRIVEN = tuple(name for name, m in METHODS.items() if m.needs_data)
DIGITS = ["--dataset", "digits", "--macs", "0.5"]


@pytest.fixture(autouse=True)
def quick_channel_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """PFS and PruneNet with a few steps: these tests are about the command, not the methods."""
    for name, factory in (("pfs", partial(PfsAllocator, 5)), ("prunenet", partial(PruneNetAllocator, 3))):
        monkeypatch.setitem(METHODS, name, dataclasses.replace(METHODS[name], factory=factory))


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_data_driven_method_runs_on_digits(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "plan.json"
    assert main(["allocate", "cifar_resnet20", *DIGITS, "--allocator", name, "-o", str(out_file)]) == 0
    text = capsys.readouterr().out
    plan = WidthPlan.from_json(out_file.read_text())
    assert plan.allocator == name and plan.input_shape == (3, 8, 8) and plan.num_classes == 10
    assert plan.effective.macs <= 0.5 * plan.base.macs
    assert plan.masked == METHODS[name].masks
    assert ("theoretical params" if plan.masked else "counted params") in text


def test_the_probe_batches_are_those_a_search_trial_scores(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "cifar_resnet20", *DIGITS, "--allocator", "snip", "--seed", "2", "--json"]) == 0
    printed = WidthPlan.from_json(capsys.readouterr().out)
    data = load_dataset(DataRequest("digits", seed=2))
    table = layer_table("cifar_resnet20", 10, 8)
    batches = probe_batches(data, PROBE_BATCHES, PROBE_BATCH_SIZE, 2)
    probe = Probe(build_from_plan(dense_plan(table), seed=2), batches, 2)
    assert printed.densities == realize("snip", table, AllocationRequest(macs=0.5), probe).plan.densities


def test_dataset_sets_the_shape_of_a_data_free_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "cifar_resnet20", *DIGITS, "--json"]) == 0
    plan = WidthPlan.from_json(capsys.readouterr().out)
    assert plan.allocator == "synexp" and plan.input_shape == (3, 8, 8)
