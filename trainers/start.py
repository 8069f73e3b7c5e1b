"""Where a plan's training starts: from scratch (the family's own init), or from the trained weights of the
plan's dense model (precrop/nn/pretrained.py), for a short fine-tune with the same recipe."""

from __future__ import annotations

import torch
from torch import nn

from precrop.errors import UserError
from precrop.nn.build import build_from_plan
from precrop.nn.pretrained import crop_pretrained, recalibrate_norms
from precrop.nn.tracing import trace_layer_table
from precrop.nn.zoo import REGISTRY
from precrop.nn.zoo.sources import source_kind
from precrop.width.plan import WidthPlan
from trainers.batches import probe_batches
from trainers.datasets import DataSet

INITS = ("scratch", "pretrained")  # `--init` of precrop train, `model.init` of a search config
# batches of RECALIBRATION_BATCH training images the BatchNorm statistics of a pretrained start are
# re-estimated on (2,560 images: enough for stable means on digits and CIFAR, a second of CPU at ResNet-20)
RECALIBRATION_BATCHES = 20
RECALIBRATION_BATCH = 128


def check_init(init: str, arch: str, masks: bool = False) -> None:
    """UserError unless a plan of `arch` can start from `init`: pretrained needs a model source that may return
    trained weights (the built-in names, torchvision: and timm: sources are built with random weights here)
    and a width plan (mask methods train the very model they scored)."""
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if init == "scratch":
        return
    if source_kind(arch) != "module":
        raise UserError(f"a pretrained start needs trained weights, and {arch} is built with random ones: give a "
                        "module.path:callable that returns your trained model (docs/width.md)")  # fmt: skip
    if masks:
        raise UserError("a pretrained start crops the trained model to a width plan; mask methods keep every "
                        "width and train the model they scored: start them from scratch")  # fmt: skip


def model_for_plan(plan: WidthPlan, init: str, data: DataSet, seed: int) -> nn.Module:
    """The model `plan` trains from: built fresh (scratch), or the plan's dense model (its source's trained
    weights) cropped to the plan's channels that matter most, BatchNorm statistics re-estimated (pretrained)."""
    if init == "scratch":
        return build_from_plan(plan, seed=seed)
    check_init(init, plan.arch)
    dense = REGISTRY.get(plan.arch).build(plan.num_classes)
    table = trace_layer_table(dense, plan.arch, plan.input_shape[1], plan.num_classes, verify=False)
    return recalibrated(crop_pretrained(dense, table, plan.widths), data, seed)


def recalibrated(model: nn.Module, data: DataSet, seed: int) -> nn.Module:
    """`model`, its BatchNorm statistics re-estimated on RECALIBRATION_BATCHES seeded training batches (the
    global RNG untouched: a dropout layer in train mode would draw from it)."""
    batches = probe_batches(data, RECALIBRATION_BATCHES, RECALIBRATION_BATCH, seed)
    with torch.random.fork_rng(devices=[]):
        recalibrate_norms(model, (images for images, _ in batches))
    return model
