"""precrop.crop / apply_plan / save / load: one call on a model the user holds, costs counted independently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import precrop
from precrop.errors import UserError
from precrop.nn.zoo.cifar_resnet import CifarResNet
from precrop.width.plan import PlanError


class TinyResidualNet(nn.Module):
    """A user's own CNN: a stem, one residual block (the add ties two convs' channels), a head."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
        )  # fmt: skip
        self.down = nn.Sequential(nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(self.down(x).mean(dim=(2, 3)))


def hook_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """MACs by forward hooks and the textbook formulas: a second counter, independent of FlopCounterMode."""
    total = 0

    def conv(m: nn.Conv2d, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear(m: nn.Linear, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The stem convolution of a TinyResidualNet."""
    conv = dict(model.named_modules())["stem.0"]
    assert isinstance(conv, nn.Conv2d)
    return conv


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


EXAMPLE = torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize("budget", [{"macs": 0.5}, {"params": 0.3}, {"macs": 0.6, "params": 0.4}])
def test_crop_meets_the_budget_by_an_independent_count(budget: dict[str, float]) -> None:
    dense = TinyResidualNet()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    small, plan = precrop.crop(dense, EXAMPLE, **budget)  # type: ignore[arg-type]
    base_macs, base_params = hook_macs(dense, (3, 16, 16)), numel(dense)
    assert (plan.base.macs, plan.base.params) == (base_macs, base_params)
    macs, params = hook_macs(small, (3, 16, 16)), numel(small)
    assert (plan.counted.macs, plan.counted.params) == (macs, params)
    if "macs" in budget:
        assert macs <= budget["macs"] * base_macs
    if "params" in budget:
        assert params <= budget["params"] * base_params
    assert small(EXAMPLE).shape == (2, 7)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items()), "crop changed the user's model"
    assert plan.arch == "tests.precrop.test_api:TinyResidualNet"
    assert plan.num_classes == 7 and plan.input_shape == (3, 16, 16)


def test_crop_takes_the_objective_and_records_it_in_the_plan() -> None:
    _, layer = precrop.crop(TinyResidualNet(), EXAMPLE, macs=0.4)
    _, path = precrop.crop(TinyResidualNet(), EXAMPLE, macs=0.4, objective="path")
    assert (layer.options["objective"], path.options["objective"]) == ("layer", "path")
    assert dict(layer.widths) == dict(path.widths)  # no depthwise conv, no gate: the same function
    with pytest.raises(UserError, match="unknown objective 'paths'"):
        precrop.crop(TinyResidualNet(), EXAMPLE, macs=0.4, objective="paths")


def test_crop_ties_the_residual_add_and_shrinks_the_tied_group_together() -> None:
    small, plan = precrop.crop(TinyResidualNet(), EXAMPLE, macs=0.4)
    convs = {n: m for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    tied = {convs["stem.0"].out_channels, convs["body.3"].out_channels, convs["body.0"].in_channels}
    assert tied == {convs["down.0"].in_channels}
    # one group for the stem and the block's output (tied by the add), one inside the block, one after it
    assert set(plan.widths) == {"input", "stem.0", "body.0", "down.0", "logits"}
    assert (plan.widths["input"], plan.widths["logits"]) == (3, 7)
    assert plan.widths["stem.0"] + plan.widths["body.0"] + plan.widths["down.0"] < 32 + 64 + 48


def test_preconfig_scale_grows_the_model_within_its_budget() -> None:
    dense = CifarResNet(20, 10)
    example = torch.randn(1, 3, 32, 32)
    big, plan = precrop.crop(dense, example, scale=1.5, expand=2.0, source="cifar_resnet20")
    macs = hook_macs(big, (3, 32, 32))
    assert plan.counted.macs == macs
    assert hook_macs(dense, (3, 32, 32)) < macs <= 1.5 * plan.base.macs
    assert max(plan.widths.values()) > 64  # some group grew past the dense model's widest


def test_uniform_and_a_data_driven_method() -> None:
    dense = TinyResidualNet()
    _, uniform = precrop.crop(dense, EXAMPLE, macs=0.5, method="uniform")
    assert uniform.allocator == "uniform"
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 7, (8,)))]
    _, pfs = precrop.crop(dense, EXAMPLE, macs=0.5, method="pfs", batches=batches)
    assert pfs.allocator == "pfs" and pfs.counted.macs <= 0.5 * pfs.base.macs


def test_init_none_keeps_the_leading_slice_and_default_reinitializes() -> None:
    dense = TinyResidualNet()
    kept, plan = precrop.crop(dense, EXAMPLE, macs=0.5, init=None)
    width = plan.widths["stem.0"]
    assert torch.equal(first_conv(kept).weight, first_conv(dense).weight[:width])
    fresh, _ = precrop.crop(dense, EXAMPLE, macs=0.5, seed=3)
    again, _ = precrop.crop(dense, EXAMPLE, macs=0.5, seed=3)
    assert not torch.equal(first_conv(fresh).weight, first_conv(dense).weight[:width])
    assert torch.equal(first_conv(fresh).weight, first_conv(again).weight), "the seed does not fix the init"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    small, plan = precrop.crop(CifarResNet(20, 10), torch.randn(1, 3, 32, 32), macs=0.5, source="cifar_resnet20")
    precrop.save(tmp_path, small, plan)
    x = torch.randn(3, 3, 32, 32)
    by_name, loaded_plan = precrop.load(tmp_path)
    from_dense, _ = precrop.load(tmp_path, model=CifarResNet(20, 10))
    assert loaded_plan == plan
    expected = small.eval()(x)
    assert torch.equal(by_name(x), expected) and torch.equal(from_dense(x), expected)


def test_the_default_source_rebuilds_an_importable_class(tmp_path: Path) -> None:
    small, plan = precrop.crop(TinyResidualNet(), EXAMPLE, macs=0.5)
    precrop.save(tmp_path, small, plan)
    rebuilt, _ = precrop.load(tmp_path)  # plan.arch = tests.precrop.test_api:TinyResidualNet, a model source
    assert type(rebuilt) is TinyResidualNet
    assert torch.equal(rebuilt(EXAMPLE), small.eval()(EXAMPLE))


def test_load_refuses_weights_of_another_model(tmp_path: Path) -> None:
    small, plan = precrop.crop(TinyResidualNet(), EXAMPLE, macs=0.5)
    other, _ = precrop.crop(TinyResidualNet(), EXAMPLE, macs=0.8)
    precrop.save(tmp_path, other, plan)
    with pytest.raises(PlanError, match="does not fit the model"):
        precrop.load(tmp_path, model=TinyResidualNet())
    assert small is not other


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "snip"}, "needs a width method"),
        ({"example_input": torch.randn(3, 16, 16)}, "shape \\(N, C, H, W\\)"),
        ({"example_input": torch.randn(1, 3, 16, 20)}, "square RGB"),
        ({"model": nn.Identity()}, "classifier"),
        ({"macs": 1.5}, "exceeds the expand bound"),
        ({"macs": 0.5, "scale": 0.5}, "either scale or macs"),
    ],
)
def test_bad_calls_are_one_line_user_errors(kwargs: dict[str, object], message: str) -> None:
    call: dict[str, object] = {"model": TinyResidualNet(), "example_input": EXAMPLE, "macs": 0.5, **kwargs}
    with pytest.raises(UserError, match=message) as caught:
        precrop.crop(**call)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_importing_precrop_does_not_import_torch() -> None:
    code = "import sys, precrop; assert 'torch' not in sys.modules; precrop.crop; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
