"""ScoreCollapse: all-zero or non-finite scores over a layer or group are errors (the check, PFS, PruneNet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from precrop.errors import UserError
from precrop.methods.channel_rank import PfsAllocator
from precrop.methods.masks import ScoreCollapse, check_scores
from precrop.methods.prunenet import PruneNetAllocator
from precrop.methods.saliency import UnitMeanGate, linearize
from precrop.width.allocate import AllocationRequest
from tests.precrop.conftest import cached_table, make_probe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_check_scores_accepts_signed_partly_zero_scores() -> None:
    check_scores("grasp", {"a": torch.tensor([-1.0, 0.0]), "b": np.array([0.0, 0.0, 1e-300])}, "cause")


def test_check_scores_names_the_method_the_units_and_the_cause() -> None:
    scores = {f"l{i}": torch.zeros(3) for i in range(6)} | {"ok": torch.ones(2), "nan": torch.tensor([1.0, np.nan])}
    with pytest.raises(ScoreCollapse) as error:
        check_scores("snip", scores, "some cause")
    assert str(error.value) == (
        "snip scores are not finite in 1 layer (nan); all zero in 6 layers (l0, l1, l2, l3, ... 2 more) "
        "of 8 layers: some cause"
    )
    assert isinstance(error.value, UserError)
    with pytest.raises(ScoreCollapse, match=r"^pfs scores are not finite in 1 group \(g\) of 1 groups: x$"):
        check_scores("pfs", {"g": np.array([np.inf, 1.0])}, "x", unit="group")


def test_prunenet_raises_when_a_group_has_no_importance() -> None:
    table = cached_table("cifar_resnet20")
    probe = make_probe("cifar_resnet20", batches=1, batch=4)
    model = probe.model
    bn = model.get_submodule("layer1.0.bn1")
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():  # the group's only site outputs exactly 0: the loss cannot depend on its channels
        bn.weight.zero_()
        bn.bias.zero_()
    with pytest.raises(ScoreCollapse, match=r"^prunenet scores are all zero in 1 group \(layer1\.0\.conv1\) of 12"):
        PruneNetAllocator(train_steps=0).allocate(table, AllocationRequest(macs=0.5), probe)


def test_pfs_raises_on_collapsed_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    table = cached_table("cifar_resnet20")
    probe = make_probe("cifar_resnet20", batches=1, batch=4)
    zeros = {
        g.name: np.zeros(g.width) if g.name == "layer2.0.conv1" else np.ones(g.width) for g in table.prunable_groups
    }
    monkeypatch.setattr(PfsAllocator, "gates", lambda *_: zeros)
    with pytest.raises(ScoreCollapse, match=r"^pfs scores are all zero in 1 group \(layer2\.0\.conv1\) of 12 groups"):
        PfsAllocator().allocate(table, AllocationRequest(macs=0.5), probe)


def test_linearize_replaces_activations_and_gates_only() -> None:
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU6(), nn.Sequential(nn.Hardswish(), nn.Sigmoid()), nn.ReLU())
    linearize(net)
    kinds = [type(m) for m in net.modules()][1:]
    assert kinds == [nn.Conv2d, nn.Identity, nn.Sequential, nn.Identity, UnitMeanGate, nn.ReLU]


def test_unit_mean_gate_divides_by_a_constant_mean() -> None:
    x = torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = UnitMeanGate()(x)
    torch.testing.assert_close(out.detach(), torch.tensor([[0.5, 1.5], [0.0, 0.0]], dtype=torch.float64))
    (grad,) = torch.autograd.grad(out[0].sum(), x)  # linear: d/dx of x / c with c held constant
    torch.testing.assert_close(grad, torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=torch.float64))
