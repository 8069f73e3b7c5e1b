"""Batch-level augmentation on the device: random crop with zero padding and horizontal flip in one gather.

Doing this per batch on the device (instead of per sample in Python) is what keeps a GPU busy on
32x32 images: a batch of 512 costs one pad, one index computation and one gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Randomly shifted (up to `pad` pixels each way, zero fill) and, if `flip`, mirrored copies.

    `images` is uint8 (B, C, H, W) on any device; the random draws come from `generator` (on the CPU,
    so a run's augmentation depends only on its seed, not on the device). The result is (B, C, H, W)
    with channels-last strides.
    """
    b, _, h, w = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).to(device, non_blocking=True)
    mirror = torch.zeros(b, dtype=torch.bool)
    if flip:
        mirror = torch.rand(b, generator=generator) < 0.5
    mirror = mirror.to(device, non_blocking=True)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    rows = offsets[:, :1] + torch.arange(h, device=device)
    ascending = torch.arange(w, device=device)
    cols = offsets[:, 1:] + torch.where(mirror[:, None], ascending.flip(0), ascending)
    batch = torch.arange(b, device=device)[:, None, None]
    nhwc = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return nhwc.permute(0, 3, 1, 2)


class Normalizer:
    """uint8 images -> float, minus mean, over std (per channel), in the requested memory format."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous(memory_format=self.memory_format).float()
        return (x - self.mean) * self.inv_std
