"""PFS and PruneNet (reconstruction): budgets met within 0.1%, gate training, Taylor importance, ranking."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from precrop.methods.base import Probe
from precrop.methods.channel_rank import (
    PfsAllocator,
    fit_ranking,
    keep_ratio,
    rank_channels,
    score_sites,
    shrink_bounds,
    widths_at,
    widths_from_ranking,
)
from precrop.methods.prunenet import PruneNetAllocator, channel_unit_costs, taylor_importance
from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import AllocationRequest, BudgetError, dense_plan
from precrop.width.costmodel import LayerTable
from tests.precrop.conftest import cached_table


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Run this module's tiny batches on one thread: on a busy 2-core machine, two OpenMP threads spin-wait
    for each other and these tests ran about 10x slower (72 s against 6 s); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_probe(table: LayerTable, batch: int = 4, count: int = 2, seed: int = 0) -> Probe:
    """The seeded dense model of `table` and `count` random batches of its input shape."""
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = table.input_shape
    batches = tuple(
        (
            torch.randn(batch, channels, height, width, generator=generator),
            torch.randint(0, table.num_classes, (batch,), generator=generator),
        )
        for _ in range(count)
    )
    return Probe(build_from_plan(dense_plan(table), seed=seed), batches, seed)


@cache
def small_efficientnet() -> LayerTable:
    """EfficientNet-B0 traced at 32x32 (cheap to run; its squeeze-excitation groups have no norm)."""
    return layer_table("efficientnet_b0", input_size=32)


@cache
def resnet20_probe() -> Probe:
    """One shared probe for the tests that never modify it."""
    return synthetic_probe(cached_table("cifar_resnet20"))


def random_scores(table: LayerTable, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform random scores for every channel of every prunable group."""
    rng = np.random.default_rng(seed)
    return {g.name: rng.random(g.width) for g in table.prunable_groups}


def state_copy(probe: Probe) -> dict[str, torch.Tensor]:
    """A deep copy of the probe model's state_dict."""
    return {k: v.detach().clone() for k, v in probe.model.state_dict().items()}


def assert_same_state(probe: Probe, before: dict[str, torch.Tensor]) -> None:
    """The probe model's state_dict is bit-identical to `before`."""
    after = probe.model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# ----- budgets --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "allocator", [PfsAllocator(steps=1), PruneNetAllocator(train_steps=1)], ids=["pfs", "prunenet"]
)
def test_meets_macs_budget_within_a_tenth_of_a_percent(allocator: PfsAllocator | PruneNetAllocator) -> None:
    table = cached_table("cifar_resnet56")
    request = AllocationRequest(macs=0.4, divisor=1, min_width=1)
    plan = allocator.allocate(table, request, synthetic_probe(table, batch=4, count=1))
    budget = 0.4 * table.cost().macs
    assert 0.999 * budget <= plan.counted.macs <= budget
    assert plan.counted == table.cost(dict(plan.widths))
    assert plan.allocator == allocator.name
    assert plan.options["kept_channels"] > 0
    assert all(1 <= plan.widths[g.name] <= g.width for g in table.prunable_groups)


def test_ranking_meets_both_budgets_and_lands_close_to_the_binding_one() -> None:
    table = cached_table("vgg16_bn_cifar")
    request = AllocationRequest(macs=0.5, params=0.3, divisor=1, min_width=1)
    cost = table.cost(widths_from_ranking(table, request, random_scores(table)))
    base = table.cost()
    assert cost.macs <= 0.5 * base.macs
    assert cost.params <= 0.3 * base.params
    assert max(cost.macs / (0.5 * base.macs), cost.params / (0.3 * base.params)) >= 0.999


def test_expansion_requests_never_grow_a_group() -> None:
    table = cached_table("cifar_resnet20")
    widths = widths_from_ranking(table, AllocationRequest(macs=1.2, params=0.9, expand=1.5), random_scores(table))
    assert all(widths[g.name] <= g.width for g in table.prunable_groups)
    assert all(widths[g.name] % 8 == 0 for g in table.prunable_groups)
    assert table.cost(widths).params <= 0.9 * table.cost().params


def test_keep_ratio() -> None:
    assert keep_ratio(AllocationRequest(macs=0.25)) == pytest.approx(0.5)
    assert keep_ratio(AllocationRequest(params=0.09)) == pytest.approx(0.3)
    assert keep_ratio(AllocationRequest(macs=0.64, params=0.5)) == pytest.approx(0.5**0.5)
    assert keep_ratio(AllocationRequest(macs=0.16, params=0.5)) == pytest.approx(0.4)
    assert keep_ratio(AllocationRequest(macs=1.44, expand=1.5)) == 1.0


# ----- ranking --------------------------------------------------------------------------------------
def test_the_group_with_the_highest_scores_keeps_the_most_channels() -> None:
    table = cached_table("cifar_resnet20")
    scores = random_scores(table)
    scores["layer2.1.conv1"] = scores["layer2.1.conv1"] + 10.0
    scores["layer3.1.conv1"] = scores["layer3.1.conv1"] - 10.0
    widths = widths_from_ranking(table, AllocationRequest(macs=0.5, divisor=1, min_width=1), scores)
    kept = {g.name: widths[g.name] / g.width for g in table.prunable_groups}
    assert kept["layer2.1.conv1"] == 1.0
    assert max(kept, key=lambda g: kept[g]) == "layer2.1.conv1"
    assert widths["layer3.1.conv1"] == 1
    assert min(kept, key=lambda g: kept[g]) == "layer3.1.conv1"


def test_ranking_order_and_ties() -> None:
    table = cached_table("cifar_resnet20")
    scores = {g.name: np.zeros(g.width) for g in table.prunable_groups}
    scores["layer3.2.conv1"][7] = 2.0
    scores["conv1"][3] = 1.0
    ranking = rank_channels(table, scores)
    assert len(ranking) == sum(g.width for g in table.prunable_groups) == 448
    assert ranking.channel(0) == ("layer3.2.conv1", 7)
    assert ranking.channel(1) == ("conv1", 3)
    assert ranking.channel(2) == ("conv1", 0)  # ties keep table order
    assert ranking.channel(len(ranking) - 1) == ("layer3.2.conv1", 63)
    assert ranking.counts(2) == {**{g: 0 for g in ranking.groups}, "layer3.2.conv1": 1, "conv1": 1}


def test_cost_is_monotone_in_the_kept_count() -> None:
    table = cached_table("cifar_resnet20")
    request = AllocationRequest(macs=0.5, divisor=4, min_width=4)
    ranking = rank_channels(table, random_scores(table))
    bounds = shrink_bounds(table, request)
    costs = [table.cost(widths_at(ranking, k, bounds)) for k in range(len(ranking) + 1)]
    assert all(a.macs <= b.macs and a.params <= b.params for a, b in itertools.pairwise(costs))
    assert costs[0] == table.cost({g.name: 4 for g in table.prunable_groups})
    assert costs[-1] == table.cost()
    assert costs[0].macs < costs[-1].macs


def test_fill_lands_closer_than_the_prefix_alone() -> None:
    table = cached_table("cifar_resnet56")
    request = AllocationRequest(macs=0.3, divisor=1, min_width=1)
    scores = random_scores(table, seed=2)
    ranking, bounds = rank_channels(table, scores), shrink_bounds(table, request)
    fit = fit_ranking(table, request, scores)
    budget = 0.3 * table.cost().macs
    assert table.cost(widths_at(ranking, fit.kept + 1, bounds)).macs > budget  # the prefix is the largest
    prefix = table.cost(widths_at(ranking, fit.kept, bounds)).macs
    assert prefix < 0.998 * budget  # for these scores the channel after the prefix is an expensive one
    assert fit.filled >= 1
    assert 0.999 * budget <= table.cost(fit.widths).macs <= budget


def test_unreachable_budget_and_bad_scores_raise() -> None:
    table = cached_table("cifar_resnet20")
    with pytest.raises(BudgetError, match="minimum widths"):
        widths_from_ranking(table, AllocationRequest(macs=0.001), random_scores(table))
    scores = random_scores(table)
    scores["conv1"] = scores["conv1"][:5]
    with pytest.raises(ValueError, match="16 channels but 5 scores"):
        widths_from_ranking(table, AllocationRequest(macs=0.5), scores)
    with pytest.raises(ValueError, match="not prunable"):
        widths_from_ranking(table, AllocationRequest(macs=0.5), {**random_scores(table), "logits": np.ones(10)})


# ----- sites and unit costs ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["cifar_resnet20", "mobilenetv2_cifar", "efficientnet_b0"])
def test_every_prunable_group_has_a_score_site(arch: str) -> None:
    table = small_efficientnet() if arch == "efficientnet_b0" else cached_table(arch)
    covered = {g for _, groups in score_sites(table) for g in groups}
    assert {g.name for g in table.prunable_groups} <= covered


def test_a_group_without_a_norm_is_scored_at_the_layers_that_write_it() -> None:
    sites = dict(score_sites(small_efficientnet()))
    assert sites["features.1.0.block.1.fc1"] == ("features.1.0.block.1.fc1",)
    assert sites["features.0.1"] == ("features.0.0",)  # a norm site: named by the norm, holding the conv's group


def test_channel_unit_costs_are_exact() -> None:
    table = cached_table("cifar_resnet20")
    macs = channel_unit_costs(table, "macs")
    params = channel_unit_costs(table, "params")
    # layer3.2.conv1's channels: an output of a 64-in 3x3 conv and an input of a 64-out 3x3 conv, at 8x8
    assert macs["layer3.2.conv1"] == 2 * 64 * 9 * 64
    assert params["layer3.2.conv1"] == 2 * 64 * 9 + 2  # plus the BatchNorm's weight and bias


# ----- PFS ------------------------------------------------------------------------------------------
def test_pfs_trains_only_the_gates_keeps_them_in_the_unit_interval_and_pulls_their_mean_to_r() -> None:
    table = cached_table("cifar_resnet20")
    probe = resnet20_probe()
    before = state_copy(probe)
    ratio = 0.5
    gates = PfsAllocator(steps=5, lr=0.1).gates(table, probe, ratio)
    assert_same_state(probe, before)
    values = np.concatenate([gates[g.name] for g in table.prunable_groups])
    assert values.size == 448
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert np.unique(values).size > 100  # the cross-entropy separates the gates
    assert abs(values.mean() - ratio) < 0.5 * abs(1.0 - ratio)
    # no penalty: cross-entropy alone does not pull the gates down
    free = np.concatenate(list(PfsAllocator(steps=5, lr=0.1, lam=0.0).gates(table, probe, ratio).values()))
    assert free.mean() > values.mean() + 0.1


def test_pfs_is_deterministic_and_records_its_options() -> None:
    table = cached_table("cifar_resnet20")
    request = AllocationRequest(macs=0.5, divisor=4, min_width=4)
    allocator = PfsAllocator(steps=2)
    first = allocator.allocate(table, request, resnet20_probe())
    second = PfsAllocator(steps=2).allocate(table, request, synthetic_probe(table))
    assert dict(first.widths) == dict(second.widths)
    assert first.counted.macs <= 0.5 * first.base.macs
    assert (
        first.options["steps"] == 2
        and first.options["lam"] == pytest.approx(0.02 * 448)
        and first.options["lr"] == 0.01
    )
    assert first.options["keep_ratio"] == pytest.approx(0.5**0.5, abs=1e-6)


@pytest.mark.parametrize("allocator", [PfsAllocator(), PruneNetAllocator()], ids=["pfs", "prunenet"])
def test_a_missing_probe_is_a_budget_error(allocator: PfsAllocator | PruneNetAllocator) -> None:
    with pytest.raises(BudgetError, match="needs a probe"):
        allocator.allocate(cached_table("cifar_resnet20"), AllocationRequest(macs=0.5))
    with pytest.raises(BudgetError, match="positive"):
        allocator.allocate(cached_table("cifar_resnet20"), AllocationRequest(macs=-1.0), resnet20_probe())


def test_pfs_gates_a_group_without_a_norm() -> None:
    table = small_efficientnet()
    probe = synthetic_probe(table, batch=2, count=1)
    gates = PfsAllocator(steps=1, lr=0.05).gates(table, probe, 0.5)
    assert gates["features.1.0.block.1.fc1"].min() < 1.0  # its gate got a gradient at the fc1 output


# ----- PruneNet -------------------------------------------------------------------------------------
def test_taylor_importance_matches_activation_times_gradient() -> None:
    table = cached_table("cifar_resnet20")
    probe = resnet20_probe()
    model = PruneNetAllocator(train_steps=0).trained_copy(probe)
    images, labels = probe.batches[0]
    importance = taylor_importance(table, model, [(images, labels)])
    captured: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        captured.append(output)

    handle = model.get_submodule("layer1.0.bn1").register_forward_hook(keep)
    try:  # the copy's weights need no gradient, so let the images carry one
        F.cross_entropy(model(images.clone().requires_grad_(True)), labels).backward()
    finally:
        handle.remove()
    activation = captured[0]
    assert activation.grad is not None
    expected = (activation * activation.grad).sum(dim=(0, 2, 3)).abs().detach().double().numpy()
    np.testing.assert_allclose(importance["layer1.0.conv1"], expected, rtol=1e-4, atol=1e-12)
    assert importance["layer1.0.conv1"].min() > 0
    # the allocator's scores are that importance per unit cost of one channel of the group
    scores = PruneNetAllocator(train_steps=0).scores(table, Probe(probe.model, probe.batches[:1], 0), "params")
    unit = channel_unit_costs(table, "params")
    for group, values in importance.items():
        np.testing.assert_allclose(scores[group], values / unit[group], rtol=1e-6, atol=1e-15)


def test_prunenet_drops_a_dead_channel_first_and_leaves_the_probe_untouched() -> None:
    table = cached_table("cifar_resnet20")
    probe = synthetic_probe(table, batch=4, count=1)
    conv = probe.model.get_submodule("layer1.0.conv1")
    assert isinstance(conv, torch.nn.Conv2d)
    with torch.no_grad():
        conv.weight[5].zero_()  # channel 5 of its group is now always 0
    before = state_copy(probe)
    allocator = PruneNetAllocator(train_steps=0)  # training would revive the channel through BatchNorm's gradient
    scores = allocator.scores(table, probe)
    assert scores["layer1.0.conv1"][5] == 0.0
    assert np.delete(scores["layer1.0.conv1"], 5).min() > 0
    assert min(v.min() for g, v in scores.items() if g != "layer1.0.conv1") > 0
    ranking = rank_channels(table, scores)
    assert ranking.channel(len(ranking) - 1) == ("layer1.0.conv1", 5)
    widths = widths_at(
        ranking, len(ranking) - 1, shrink_bounds(table, AllocationRequest(macs=0.5, divisor=1, min_width=1))
    )
    assert widths == {**{g.name: g.width for g in table.prunable_groups}, "layer1.0.conv1": 15}
    PruneNetAllocator(train_steps=1).allocate(table, AllocationRequest(macs=0.5), probe)
    assert_same_state(probe, before)


def test_prunenet_is_deterministic_and_budgets_params() -> None:
    table = cached_table("cifar_resnet20")
    allocator = PruneNetAllocator(train_steps=1)
    request = AllocationRequest(params=0.5, divisor=4, min_width=4)
    first = allocator.allocate(table, request, resnet20_probe())
    assert dict(first.widths) == dict(allocator.allocate(table, request, synthetic_probe(table)).widths)
    assert first.options["cost_metric"] == "params" and first.options["train_steps"] == 1
    assert first.counted.params <= 0.5 * first.base.params
