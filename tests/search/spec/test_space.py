"""A sampled point resolves once into a trial spec: the allocation request, the recipe and the seed."""

from __future__ import annotations

import pytest

from precrop.width.allocate import BudgetError
from search.spec.parse import parse_config
from search.spec.space import TrialSpec, allocation_request
from trainers.recipe import RecipeError

POINT = {"allocator": "synexp", "budget": 0.4, "lr": 0.05, "weight_decay": 3e-4, "label_smoothing": 0.05,
         "batch_size": 64}  # fmt: skip


def test_a_point_resolves_into_the_request_recipe_and_seed_the_config_and_point_describe() -> None:
    config = parse_config({"space": {"budget_metric": "params", "objective": "path", "divisor": 4, "epochs": 3,
                                     "warmup_epochs": 2}, "search": {"seed": 7}})  # fmt: skip
    spec = TrialSpec.resolve(config, POINT)
    request = spec.request
    assert (request.params, request.macs, request.objective, request.divisor) == (0.4, None, "path", 4)
    assert spec.request.variant == "gp" and spec.seed == 7 and spec.allocator == "synexp"
    recipe = spec.recipe
    assert (recipe.lr, recipe.weight_decay, recipe.label_smoothing, recipe.batch_size) == (0.05, 3e-4, 0.05, 64)
    assert recipe.epochs == 3 and recipe.warmup_epochs == 2.0 and recipe.seed == 7


def test_a_studys_seed_and_variant_override_the_configs() -> None:
    spec = TrialSpec.resolve(parse_config({}), {**POINT, "seed": 2, "variant": "fit"})
    assert spec.seed == 2 and spec.recipe.seed == 2 and spec.request.variant == "fit"


def test_each_setting_is_checked_by_the_class_that_owns_it() -> None:
    config = parse_config({})
    with pytest.raises(BudgetError, match="budget must be a positive number"):
        TrialSpec.resolve(config, {**POINT, "budget": -0.1})
    with pytest.raises(RecipeError, match="lr must be a finite number"):
        TrialSpec.resolve(config, {**POINT, "lr": 0.0})
    longer = parse_config({"space": {"epochs": 3, "warmup_epochs": 5}})  # TrainConfig's rule, not a silent cap
    with pytest.raises(RecipeError, match=r"^warmup_epochs must be a finite number in \[0\.0, 3\.0\], got 5\.0$"):
        TrialSpec.resolve(longer, POINT)


def test_the_preflight_request_is_the_trials_request() -> None:
    config = parse_config({"space": {"variant": "internal"}, "model": {"keep": ["conv1", "layer3.*"]}})
    request = TrialSpec.resolve(config, POINT).request
    assert request.keep == ("conv1", "layer3.*")  # model.keep reaches every trial's allocation
    assert allocation_request(config.space, 0.4, keep=config.model.keep) == request
