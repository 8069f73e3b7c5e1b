"""Measurement: counted cost equals the plan's, and timings are sane medians."""

from __future__ import annotations

import torch

from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import AllocationRequest, SynExpAllocator
from trainers.measure import measure_latency, measure_model, measure_train_step


def test_measure_model_counts_the_plan_cost_and_times_cpu() -> None:
    table = layer_table("cifar_resnet20")
    plan = SynExpAllocator().allocate(table, AllocationRequest(macs=0.5))
    model = build_from_plan(plan, seed=0)
    result = measure_model(model, plan.input_shape, batch_sizes=(1, 8), devices=("cpu",), max_seconds=0.5)
    assert result["params"] == plan.counted.params and result["macs"] == plan.counted.macs
    # both batch sizes timed; their order is not asserted: another process on the machine can make a
    # batch of 1 take longer than a batch of 8 (seen under load), and no test may depend on wall time
    assert result["latency_cpu_b1_ms"] > 0 and result["latency_cpu_b8_ms"] > 0


def test_timings_keep_at_least_three_repeats_and_leave_the_model_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    model(torch.zeros(1, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    latency = measure_latency(model, (3, 8, 8), batch_size=2, repeats=50, max_seconds=0.0)
    step = measure_train_step(model, (3, 8, 8), batch_size=2, num_classes=4, repeats=50, max_seconds=0.0)
    assert latency.repeats == 3 and step.repeats == 3
    assert latency.median_ms > 0 and step.median_ms > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
