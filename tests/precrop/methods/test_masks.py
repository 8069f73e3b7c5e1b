"""The mask-method contract (every mask method must pass it), mask application, and the density methods."""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import numpy as np
import pytest
import torch

from precrop.methods.density_masks import erk_shape, synexp_layer_densities
from precrop.methods.masks import (
    apply_masks,
    kept_counts,
    masked_cost,
    prunable_layers,
    select_global,
    weight_budgets,
)
from precrop.methods.registry import MASK_METHODS, METHODS, realize
from precrop.methods.saliency import SynFlowPruner
from precrop.nn.build import build_from_plan
from precrop.width.allocate import AllocationRequest, BudgetError, dense_plan
from precrop.width.plan import PlanError, WidthPlan
from tests.precrop.conftest import cached_table, make_probe


@pytest.fixture(autouse=True)
def quick_synflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """SynFlow with 10 rounds here (100 take ~30 s on 2 cores); test_saliency.py runs the full 100."""
    monkeypatch.setitem(METHODS, "synflow", dataclasses.replace(METHODS["synflow"], factory=partial(SynFlowPruner, 10)))


MASK_CASES = [AllocationRequest(params=0.1), AllocationRequest(macs=0.3, params=0.5)]


@pytest.mark.parametrize("name", MASK_METHODS)
@pytest.mark.parametrize("request_", MASK_CASES, ids=["params0.1", "macs0.3+params0.5"])
def test_mask_method_contract(name: str, request_: AllocationRequest) -> None:
    table = cached_table("cifar_resnet20")
    probe = make_probe("cifar_resnet20")
    before = {k: v.clone() for k, v in probe.model.state_dict().items()}
    result = realize(name, table, request_, probe)
    plan, masks = result.plan, result.masks
    # the probe model is untouched
    assert all(torch.equal(before[k], v) for k, v in probe.model.state_dict().items())
    # one boolean mask per prunable layer, shaped like its weight, never empty
    weights = {layer.name: probe.model.get_submodule(layer.name).weight for layer in prunable_layers(table)}
    assert set(masks) == set(weights)
    for layer_name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == weights[layer_name].shape
        assert int(mask.sum()) >= 1
        assert plan.densities[layer_name] == pytest.approx(int(mask.sum()) / mask.numel(), abs=1e-15)
    # dense shapes, theoretical cost of the kept weights, budgets met
    assert plan.masked and plan.granularity in ("weight", "filter")
    assert dict(plan.widths) == table.base_widths and plan.counted == table.cost()
    assert plan.sparse == masked_cost(table, kept_counts(masks))
    for metric in request_.metrics:
        assert getattr(plan.sparse, metric) <= getattr(request_, metric) * getattr(table.cost(), metric)
    # deterministic for one probe, and a JSON round trip keeps everything
    again = realize(name, table, request_, probe)
    assert all(torch.equal(again.masks[k], masks[k]) for k in masks)
    assert WidthPlan.from_json(plan.to_json()) == plan


def test_score_methods_keep_the_exact_weight_count_of_a_params_budget() -> None:
    table = cached_table("cifar_resnet20")
    request = AllocationRequest(params=0.1)
    budget = weight_budgets(table, request)["params"]
    for name in ("synflow", "snip", "grasp"):
        masks = realize(name, table, request, make_probe("cifar_resnet20")).masks
        assert sum(kept_counts(masks).values()) == math.floor(budget)


def test_select_global_is_one_threshold_and_fills_a_macs_budget_in_score_order() -> None:
    table = cached_table("cifar_resnet20")
    rng = np.random.default_rng(0)
    scores = {x.name: torch.from_numpy(rng.random(x.weight_count(table.base_widths))) for x in prunable_layers(table)}
    masks = select_global(table, scores, {"params": 5000.0})
    kept = torch.cat([scores[k][masks[k].flatten()] for k in masks])
    dropped = torch.cat([scores[k][~masks[k].flatten()] for k in masks])
    # apart from each layer's forced best weight, every kept score beats every dropped one
    forced = {k: int(scores[k].argmax()) for k in masks}
    free_kept = torch.cat([scores[k][[i for i in torch.nonzero(masks[k].flatten()).flatten().tolist()
                                      if i != forced[k]]] for k in masks])  # fmt: skip
    assert sum(kept_counts(masks).values()) == 5000
    assert float(free_kept.min()) >= float(dropped.max())
    assert len(kept) == 5000
    macs_budget = weight_budgets(table, AllocationRequest(macs=0.25))
    macs_masks = select_global(table, scores, macs_budget)
    spent = masked_cost(table, kept_counts(macs_masks)).macs
    assert spent <= 0.25 * table.cost().macs
    biggest_step = max(x.positions for x in prunable_layers(table))
    assert spent >= 0.25 * table.cost().macs - biggest_step


def test_masked_weights_stay_exactly_zero_through_sgd_with_momentum_and_decay() -> None:
    table = cached_table("cifar_resnet20")
    probe = make_probe("cifar_resnet20")
    masks = realize("random", table, AllocationRequest(params=0.2), probe).masks
    model = probe.model
    apply_masks(model, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for images, labels in probe.batches * 2:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        assert torch.count_nonzero(weight[~mask]) == 0
        assert torch.count_nonzero(weight[mask]) == int(mask.sum())  # the kept ones did train
    # a plain dense state_dict: loads into a freshly built dense model
    fresh = build_from_plan(dense_plan(table))
    fresh.load_state_dict(model.state_dict())


def test_random_keeps_one_density_everywhere_and_erk_favours_small_layers() -> None:
    table = cached_table("cifar_resnet20")
    probe = make_probe("cifar_resnet20")
    random_plan = realize("random", table, AllocationRequest(params=0.2), probe).plan
    densities = list(random_plan.densities.values())
    assert max(densities) - min(densities) < 0.01  # equal up to the one-weight floor of small layers
    erk_plan = realize("erk", table, AllocationRequest(params=0.2), probe).plan
    widths = table.base_widths
    layers = prunable_layers(table)
    shapes = {x.name: erk_shape(x, widths) for x in layers}
    sizes = {x.name: x.weight_count(widths) for x in layers}
    # unsaturated layers big enough that flooring to whole weights moves their density < 2%
    big = [n for n, d in erk_plan.densities.items() if d < 1 and d * sizes[n] > 50]
    ratios = [erk_plan.densities[n] / shapes[n] for n in big]
    assert max(ratios) / min(ratios) < 1.05  # density proportional to the ERK shape (up to flooring)
    first, last_stage = "conv1", "layer3.2.conv2"
    assert erk_plan.densities[first] > erk_plan.densities[last_stage]


@pytest.mark.parametrize(("arch", "request_"), [("cifar_resnet20", AllocationRequest(params=0.2)),
                                                ("cifar_resnet20", AllocationRequest(macs=0.3))])  # fmt: skip
def test_granularity_arms_realize_the_channel_plans_density_vector(arch: str, request_: AllocationRequest) -> None:
    table = cached_table(arch)
    target = synexp_layer_densities(table, request_)
    layers = prunable_layers(table)
    widths = table.base_widths
    sizes = {x.name: x.weight_count(widths) for x in layers}
    # the vector is the channel plan's own: kept / base weights of each layer at the plan's widths
    channel = realize("synexp", table, request_, None).plan
    for layer in layers:
        assert target[layer.name] == pytest.approx(layer.weight_count(channel.widths) / sizes[layer.name])
    weight_plan = realize("synexp_weight", table, request_, make_probe(arch)).plan
    for name, density in weight_plan.densities.items():
        assert abs(density * sizes[name] - max(1.0, math.floor(target[name] * sizes[name]))) < 1e-6
    filter_result = realize("synexp_filter", table, request_, make_probe(arch))
    for name, mask in filter_result.masks.items():
        rows = mask.flatten(1).all(dim=1) | ~mask.flatten(1).any(dim=1)
        assert bool(rows.all())  # whole filters, kept or dropped
        filters = mask.shape[0]
        assert abs(filter_result.plan.densities[name] - target[name]) <= 1.5 / filters + 1e-9
    # one vector, three ways: the same SynExp objective and the same cost (within 2%)
    log_sum = {
        "channel": sum(math.log(target[x.name]) for x in layers),
        "weight": sum(math.log(weight_plan.densities[x.name]) for x in layers),
        "filter": sum(math.log(filter_result.plan.densities[x.name]) for x in layers),
    }
    assert max(log_sum.values()) - min(log_sum.values()) < 0.1
    for metric in request_.metrics:
        costs = [getattr(channel.counted, metric), getattr(weight_plan.effective, metric),
                 getattr(filter_result.plan.effective, metric)]  # fmt: skip
        assert max(costs) <= 1.02 * min(costs)


@pytest.mark.parametrize("name", MASK_METHODS)
def test_mask_methods_refuse_what_they_cannot_do(name: str) -> None:
    table = cached_table("cifar_resnet20")
    probe = make_probe("cifar_resnet20")
    with pytest.raises(BudgetError, match="expand"):
        realize(name, table, AllocationRequest(macs=1.2, expand=1.5), probe)
    with pytest.raises(BudgetError, match="no weight"):
        realize(name, table, AllocationRequest(params=1e-6), probe)
    with pytest.raises(BudgetError, match="needs a probe"):
        realize(name, table, AllocationRequest(params=0.5), None)


def test_registry_names_every_method_once() -> None:
    assert set(METHODS) == {"synexp", "uniform", "pfs", "prunenet", "synflow", "snip", "grasp", "random", "erk",
                            "synexp_weight", "synexp_filter"}  # fmt: skip
    with pytest.raises(BudgetError, match="unknown allocator"):
        realize("magic", cached_table("cifar_resnet20"), AllocationRequest(params=0.5), None)


def test_version_1_plans_still_load_and_bad_mask_fields_are_refused() -> None:
    table = cached_table("cifar_resnet20")
    data = dense_plan(table).to_dict()
    for key in ("granularity", "densities", "sparse"):
        data.pop(key)
    data["schema_version"] = 1
    old = WidthPlan.from_dict(data)
    assert old.granularity == "channel" and not old.densities and old.effective == old.counted
    masked = realize("random", table, AllocationRequest(params=0.3), make_probe("cifar_resnet20")).plan.to_dict()
    with pytest.raises(PlanError, match="granularity"):
        WidthPlan.from_dict({**masked, "granularity": "kernel"})
    with pytest.raises(PlanError, match="density"):
        WidthPlan.from_dict({**masked, "densities": {"conv1": 1.5}})
