"""Count a built model's real cost: parameters by summing tensors, MACs with torch's FlopCounterMode."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from precrop.width.costmodel import Cost


def count_params(model: nn.Module) -> int:
    """Number of parameters (`sum(p.numel())`)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """MACs per sample of conv and matmul ops: FlopCounterMode's count / 2 for a batch of one."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    flops = counter.get_total_flops()
    return int(flops) // 2


def count_cost(model: nn.Module, input_shape: tuple[int, int, int]) -> Cost:
    """Counted params and MACs of `model` at `input_shape` (C, H, W)."""
    return Cost(params=count_params(model), macs=count_macs(model, input_shape))
