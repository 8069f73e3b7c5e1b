"""Pretrained starts (precrop/nn/pretrained.py, trainers/start.py): the channels kept are the ones with the
largest filter L1 norms, their weights are the dense model's (checked against a hand-indexed forward pass),
and a ResNet-20 trained here on digits, cropped to half its MACs, starts far above chance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import precrop
from precrop.methods.registry import realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.nn.pretrained import PretrainedStartError, channel_importance, chosen_channels, crop_pretrained
from precrop.nn.tracing import trace_layer_table
from precrop.nn.zoo import REGISTRY, build_model
from precrop.width.allocate import AllocationRequest
from trainers.datasets import DataRequest, DataSet
from trainers.load import load_dataset
from trainers.loop import Trainer, evaluate, train
from trainers.recipe import TrainConfig
from trainers.start import model_for_plan


class Small(nn.Module):
    """conv(3->8) bn relu, conv(8->6) bn relu, global pool, linear(6->4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def _trained_looking(seed: int = 0) -> Small:
    """A Small with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = Small()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _top(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The k output channels of largest L1 norm, in order: written out independently of the module."""
    norms = weight.abs().sum(dim=(1, 2, 3)).tolist()
    best = sorted(range(len(norms)), key=lambda c: -norms[c])[:k]
    return torch.tensor(sorted(best))


def test_the_kept_channels_are_the_largest_filters_and_carry_their_weights() -> None:
    dense = _trained_looking()
    table = trace_layer_table(dense, "test:small", 8, 4, verify=True)
    groups = {layer.name: layer.out_group for layer in table.layers}
    widths = {groups["conv1"]: 3, groups["conv2"]: 2}
    cropped = crop_pretrained(dense, table, widths).eval()
    one, two = _top(dense.conv1.weight, 3), _top(dense.conv2.weight, 2)
    # the forward pass of the kept channels, by hand
    x = torch.randn(5, 3, 8, 8)

    def bn(y: torch.Tensor, norm: nn.BatchNorm2d, keep: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(y, norm.running_mean[keep], norm.running_var[keep], norm.weight[keep], norm.bias[keep],
                            False, 0.0, norm.eps)  # fmt: skip

    with torch.no_grad():
        h = F.relu(bn(F.conv2d(x, dense.conv1.weight[one], padding=1), dense.bn1, one))
        h = F.relu(bn(F.conv2d(h, dense.conv2.weight[two][:, one], padding=1), dense.bn2, two))
        expected = F.linear(h.mean(dim=(2, 3)), dense.fc.weight[:, two], dense.fc.bias)
        assert torch.allclose(cropped(x), expected, atol=1e-6)
    assert tuple(cropped.conv2.weight.shape) == (2, 3, 3, 3)
    assert dense.conv1.weight.shape[0] == 8  # the dense model is untouched


def test_at_full_width_nothing_is_chosen_and_the_copy_computes_the_same() -> None:
    dense = _trained_looking(1)
    table = trace_layer_table(dense, "test:small", 8, 4, verify=True)
    assert chosen_channels(channel_importance(dense, table), table.base_widths) == {}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(crop_pretrained(dense, table, table.base_widths).eval()(x), dense(x))


def test_a_coupled_group_is_ranked_over_all_its_writers_each_layer_weighing_alike() -> None:
    table = layer_table("cifar_resnet20")
    model = build_model("cifar_resnet20", 10)
    scores = channel_importance(model, table)
    writers = [layer.name for layer in table.layers if layer.out_group == "conv1"]  # the first stage's stream
    assert len(writers) == 4  # the stem and three blocks' second convs
    assert scores["conv1"].sum().item() == pytest.approx(4 * 16)  # each writer's norms average 1


@pytest.mark.parametrize(("stage1", "stage2", "stage3"), [(8, 24, 48), (16, 24, 48), (8, 16, 32), (16, 8, 16)])
def test_an_option_a_shortcut_still_maps_each_kept_input_channel_onto_the_same_output_channel(
    stage1: int, stage2: int, stage3: int
) -> None:
    """The zero-pad shortcut between ResNet-20's stages places channels by position: dense, output channel
    left + i is input i. Whatever the widths, the cropped shortcut must send each kept input channel to the
    output position that holds the dense channel it reached (each case here leaves room on the pads' sides)."""
    torch.manual_seed(3)
    dense = build_model("cifar_resnet20", 10).eval()
    table = layer_table("cifar_resnet20")
    pads = [layer for layer in table.layers if layer.kind == "channel_pad"]
    assert [(p.in_groups[0], p.out_group) for p in pads] == [("conv1", "layer2.0.conv2"),
                                                               ("layer2.0.conv2", "layer3.0.conv2")]  # fmt: skip
    widths = {**table.base_widths, "conv1": stage1, "layer2.0.conv2": stage2, "layer3.0.conv2": stage3}
    chosen = chosen_channels(channel_importance(dense, table), widths, table)
    cropped = crop_pretrained(dense, table, widths).eval()
    x = torch.randn(2, 16, 8, 8)
    kept_in = chosen.get("conv1", torch.arange(16))
    with torch.no_grad():
        expected = dense.layer2[0].shortcut(x)[:, chosen["layer2.0.conv2"]]
        got = cropped.layer2[0].shortcut(x[:, kept_in])
    assert torch.equal(got, expected)
    # the ranking alone (what the pads' constraint replaces) would have broken it
    ranked = chosen_channels(channel_importance(dense, table), widths)["layer2.0.conv2"]
    assert not torch.equal(ranked, chosen["layer2.0.conv2"])


def test_a_group_wider_than_the_model_cannot_start_from_its_weights() -> None:
    dense = _trained_looking()
    table = trace_layer_table(dense, "test:small", 8, 4, verify=True)
    group = table.layers[0].out_group
    with pytest.raises(PretrainedStartError, match="wider than the pretrained model's 8"):
        crop_pretrained(dense, table, {group: 16})


@pytest.fixture(scope="module")
def digits() -> DataSet:
    return load_dataset(DataRequest("digits", seed=0, with_test=True))


@pytest.fixture(scope="module")
def trained_resnet(digits: DataSet) -> nn.Module:
    """ResNet-20 trained on digits: the "pretrained" model (about 96% validation accuracy)."""
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10)
    init = REGISTRY.get("cifar_resnet20").init
    assert init is not None
    init(model)
    result = train(model, digits, TrainConfig(epochs=10, batch_size=64, lr=0.1, seed=0))
    assert result.final["val_acc"] >= 0.9
    return model


def _trained_source(model: nn.Module, folder: Path, module: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A model source `module:trained` (in `folder`, importable) that returns a ResNet-20 with `model`'s weights.
    Each test names its own module: sources are imported (and cached) by name."""
    torch.save(model.state_dict(), folder / "trained.pt")
    (folder / f"{module}.py").write_text(
        "import torch\nfrom precrop.nn.zoo import build_model\n\n"
        "def trained(num_classes):\n"
        "    model = build_model('cifar_resnet20', num_classes)\n"
        f"    model.load_state_dict(torch.load({str(folder / 'trained.pt')!r}))\n"
        "    return model\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return f"{module}:trained"


def _test_accuracy(model: nn.Module, digits: DataSet) -> float:
    assert digits.test is not None
    trainer = Trainer(model, digits, TrainConfig(epochs=1))
    return float(evaluate(model.eval(), trainer.batches(digits.test, 512))["accuracy"])


def test_a_trained_resnet_cropped_to_half_its_macs_starts_far_above_chance(
    trained_resnet: nn.Module, digits: DataSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = layer_table("cifar_resnet20", 10, digits.image_shape[1])
    plan = realize("synexp", table, AllocationRequest(macs=0.5), None).plan
    scratch = _test_accuracy(build_from_plan(plan, seed=0), digits)
    # the user's model source returns the trained model (what `model.arch: my_models:trained` does)
    arch = _trained_source(trained_resnet, tmp_path, "my_models", monkeypatch)
    source = precrop.crop(trained_resnet, torch.zeros(1, *table.input_shape), macs=0.5, source=arch, init=None).plan
    assert dict(source.widths) == dict(plan.widths)  # the same allocation, traced from the model in hand
    started = _test_accuracy(model_for_plan(source, "pretrained", digits, seed=0), digits)
    assert scratch < 0.2, scratch  # chance is 0.1
    assert started > 0.6, started  # measured 0.85 (docs/width.md)


def test_crop_starts_from_the_weights_of_the_model_it_is_handed(trained_resnet: nn.Module, digits: DataSet) -> None:
    example = torch.zeros(1, 3, digits.image_shape[1], digits.image_shape[1])
    small, plan = precrop.crop(trained_resnet, example, macs=0.5, init="pretrained")
    assert plan.counted.macs <= 0.5 * plan.base.macs
    table = layer_table("cifar_resnet20", 10, digits.image_shape[1])
    chosen = chosen_channels(channel_importance(trained_resnet, table), plan.widths)
    # a narrowed group whose writer reads a group kept whole: its filters are the dense ones at the chosen rows
    writer = next(layer for layer in table.layers if layer.out_group in chosen and layer.kind == "conv"
                  and not any(g in chosen for g in layer.in_groups))  # fmt: skip
    modules, dense = dict(small.named_modules()), dict(trained_resnet.named_modules())
    rows = chosen[writer.out_group]
    assert len(rows) < dense[writer.name].weight.shape[0]
    assert torch.equal(modules[writer.name].weight, dense[writer.name].weight[rows])


def test_precrop_train_fine_tunes_a_plan_from_the_trained_weights(
    trained_resnet: nn.Module, digits: DataSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`precrop train --plan P --init pretrained`: one epoch at a small learning rate from the trained weights
    ends far above the same epoch from scratch."""
    import json

    from search.cli import main

    arch = _trained_source(trained_resnet, tmp_path, "digit_models", monkeypatch)
    plan = tmp_path / "plan.json"
    assert main(["allocate", arch, "--macs", "0.5", "--input-size", "8", "--num-classes", "10",
                 "-o", str(plan)]) == 0
    accuracy = {}
    for init in ("scratch", "pretrained"):
        run = tmp_path / init
        argv = ["train", "--plan", str(plan), "--init", init, "--dataset", "digits", "--epochs", "1", "--lr", "0.02",
                "--warmup-epochs", "0", "--no-measure", "-o", str(run)]  # fmt: skip
        assert main(argv) == 0
        accuracy[init] = json.loads((run / "metrics.json").read_text())["final"]["val_acc"]
    # measured 0.76 and 0.87 (1 and 2 torch threads) against 0.15 from scratch: far apart, whatever the threads
    assert accuracy["pretrained"] > 0.6 and accuracy["pretrained"] - accuracy["scratch"] > 0.3, accuracy
