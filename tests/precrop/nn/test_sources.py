"""Contract of every model source: trace -> allocate (SynExp, half the MACs) -> build from the plan -> the
built model's counted cost equals the plan's, by FlopCounterMode and by an independent hook counter.

Sources: a built-in name, torchvision:<name>, timm:<name> (CNNs of many families) and module.path:callable.
Models the tracer cannot describe exactly are refused with one line, never a wrong table.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from precrop.errors import UserError
from precrop.nn.build import build_from_plan, layer_table
from precrop.nn.counting import count_cost
from precrop.nn.zoo import REGISTRY, ModelSourceError, UnknownArchError
from precrop.nn.zoo.sources import resolve_source, source_kind, user_module
from precrop.width.allocate import AllocationRequest, SynExpAllocator
from precrop.width.plan import WidthPlan

pytestmark = pytest.mark.usefixtures("one_thread")

# the smallest variant of each timm CNN family that traces exactly (measured at 64x64, 10 classes); by timm
# module: resnet, mobilenetv3, efficientnet, regnet, byobnet, cspnet, convnext, densenet, hrnet, vovnet,
# hgnet, repghost, starnet
TIMM_FAMILIES = [
    "resnet10t", "mobilenetv3_small_050", "lcnet_050", "mobilenetv4_conv_small", "efficientnet_lite0",
    "mobilenetv2_050", "regnetx_002", "regnety_002", "repvgg_a0", "gernet_s", "mobileone_s0", "darknet17",
    "convnext_atto", "densenet121", "hrnet_w18_small", "ese_vovnet19b_slim_dw", "hgnetv2_b0", "repghostnet_050",
    "starnet_s050",
]  # fmt: skip
# refused in one line, each for a reason of its own
TIMM_REFUSED = {
    "rexnet_100": "slices part of a tensor's channels",  # x[:, :c] + shortcut
    "cspresnet50": "reads 128 channels from no known group",  # a cross-stage split
    "ghostnet_050": "is not exact",  # the tracer's table would be wrong: refused by the counted cost
    "mixnet_s": "is not exact",  # mixed kernels over channel splits
    "edgenext_xx_small": "inputs do not split over its channels",  # attention over channels
}

USER_MODULE = '''
import torch
from torch import nn


class Residual(nn.Module):
    """A small residual CNN: its residual stream and both convs of the block are channel groups."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 32, 3, padding=1))
        self.down = nn.Conv2d(32, 48, 3, stride=2, padding=1)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(torch.relu(self.down(x)).mean(dim=(2, 3)))


def residual(num_classes=10):
    return Residual(num_classes)


residual.input_size = 16
NOT_CALLABLE = 3


class Zoo:
    small = staticmethod(residual)


def fixed_head():
    return Residual(7)


def returns_int(num_classes=10):
    return 42


def raises(num_classes=10):
    raise ValueError("bad width\\nsecond line")


class Sliced(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3)
        self.b = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.a(x)
        x = torch.cat([self.b(x[:, :8]), x[:, 8:]], dim=1)
        return self.fc(x.mean(dim=(2, 3)))


class BadForward(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        raise RuntimeError("my forward fails\\nat line two")
'''


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of the user's own models in an empty working directory; yields its module name."""
    name = f"user_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    yield name
    sys.modules.pop(name, None)
    resolve_source.cache_clear()


def hook_cost(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(params, MACs) by summing tensors and by forward hooks with the textbook formulas: a counter that
    shares nothing with FlopCounterMode."""
    macs = 0

    def hook(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += out.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs += out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return sum(p.numel() for p in model.parameters()), macs


def run_contract(arch: str, num_classes: int, input_size: int) -> WidthPlan:
    """trace -> SynExp at 0.5 MACs -> build_from_plan -> the built model costs exactly what the plan says."""
    table = layer_table(arch, num_classes, input_size, verify=True)
    plan = SynExpAllocator().allocate(table, AllocationRequest(macs=0.5))
    assert plan.arch == arch
    assert plan.counted.macs <= 0.5 * plan.base.macs
    assert plan.counted.macs >= 0.3 * plan.base.macs, "the budget should be used, not undershot"
    assert plan.counted.params < plan.base.params
    model = build_from_plan(WidthPlan.from_json(plan.to_json()), seed=0)  # as a worker rebuilds it
    assert count_cost(model, plan.input_shape) == plan.counted
    assert hook_cost(model, plan.input_shape) == (plan.counted.params, plan.counted.macs)
    assert model(torch.zeros(2, *plan.input_shape)).shape == (2, num_classes)
    return plan


def one_line_user_error(arch: str, input_size: int, says: str) -> None:
    with pytest.raises(UserError) as info:
        layer_table(arch, 10, input_size, verify=True)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and len(message) < 400, message
    assert says in message, message


# ----- every source kind through the contract -----------------------------------------------------


def test_builtin_name() -> None:
    assert source_kind("cifar_resnet20") is None
    plan = run_contract("cifar_resnet20", 10, 32)
    assert (plan.base.params, plan.base.macs) == (269_722, 40_551_040)  # ResNet-20: 0.27M, 40.6M


def test_torchvision_source() -> None:
    assert source_kind("torchvision:mobilenet_v3_small") == "torchvision"
    run_contract("torchvision:mobilenet_v3_small", 10, 64)


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_cnn_families(name: str) -> None:
    plan = run_contract(f"timm:{name}", 10, 64)
    assert len(plan.widths) >= 5


def test_timm_spec_takes_input_size_and_normalization_from_its_pretrained_config() -> None:
    import timm

    spec = REGISTRY.get("timm:resnet10t")
    cfg = timm.get_pretrained_cfg("resnet10t")
    assert cfg is not None
    assert spec.input_size == cfg.input_size[-1] == 176  # not the usual 224: read, not assumed
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.num_classes == 1000
    head = spec.build(5).get_classifier()  # type: ignore[operator]  # timm's API, untyped through nn.Module
    assert head.out_features == 5


@pytest.mark.parametrize(("name", "says"), sorted(TIMM_REFUSED.items()))
def test_timm_models_the_tracer_cannot_describe_are_refused_in_one_line(name: str, says: str) -> None:
    one_line_user_error(f"timm:{name}", 64, says)


def test_user_callable_source(user_models: str) -> None:
    arch = f"{user_models}:residual"
    assert source_kind(arch) == "module" and user_module(arch) == user_models
    spec = REGISTRY.get(arch)
    assert (spec.num_classes, spec.input_size) == (10, 16)  # the num_classes default; the input_size attribute
    plan = run_contract(arch, 6, 16)
    assert plan.input_shape == (3, 16, 16)
    # the class itself is a callable too, and so is a dotted path inside the module
    run_contract(f"{user_models}:Residual", 10, 16)
    small: nn.Module = REGISTRY.get(f"{user_models}:Zoo.small").build(4)
    assert small(torch.zeros(1, 3, 16, 16)).shape == (1, 4)


def test_user_callable_without_num_classes(user_models: str) -> None:
    arch = f"{user_models}:fixed_head"
    assert REGISTRY.get(arch).num_classes == 7
    run_contract(arch, 7, 16)
    with pytest.raises(ModelSourceError, match="takes no num_classes argument and builds 7 classes, but 10"):
        layer_table(arch, 10, 16)


def test_user_module_errors_are_one_line(user_models: str) -> None:
    cases = [
        ("no_such_module_here:net", UnknownArchError, "cannot import module 'no_such_module_here'"),
        (f"{user_models}:missing", UnknownArchError, f"'{user_models}' has no attribute 'missing'"),
        (f"{user_models}:returns_int", ModelSourceError, "returned int, not a torch nn.Module"),
        (f"{user_models}:raises", ModelSourceError, "raised ValueError: bad width"),
        (f"{user_models}:NOT_CALLABLE", ModelSourceError, "is an object of type int, not a callable"),
        ("a-b:c", UnknownArchError, "is not a model source"),
    ]
    for arch, kind, says in cases:
        with pytest.raises(kind) as info:
            layer_table(arch, 10, 16)
        assert says in str(info.value) and len(str(info.value).splitlines()) == 1, str(info.value)


def test_untraceable_user_models_are_refused_in_one_line(user_models: str) -> None:
    one_line_user_error(f"{user_models}:Sliced", 16, "slices part of a tensor's channels")
    one_line_user_error(f"{user_models}:BadForward", 16, "cannot trace")
    one_line_user_error(f"{user_models}:BadForward", 16, "RuntimeError: my forward fails")


def test_long_names_are_clipped_in_errors() -> None:
    for arch in ("m" * 5000 + ":f", "timm:" + "x" * 5000, "torchvision:" + "y" * 5000, "z" * 5000):
        with pytest.raises(UserError) as info:
            REGISTRY.get(arch)
        assert len(str(info.value)) < 800 and "characters)" in str(info.value)
