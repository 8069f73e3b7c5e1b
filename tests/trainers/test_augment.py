"""The on-device crop+flip equals a per-sample reference implementation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.augment import Normalizer, random_crop_flip


def reference_crop_flip(images: torch.Tensor, pad: int, offsets: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    out = []
    h, w = images.shape[2:]
    for image, (oy, ox), flip in zip(images, offsets.tolist(), mirror.tolist(), strict=True):
        crop = F.pad(image, (pad, pad, pad, pad))[:, oy : oy + h, ox : ox + w]
        out.append(crop.flip(2) if flip else crop)
    return torch.stack(out)


def test_crop_flip_matches_per_sample_reference() -> None:
    images = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8)
    result = random_crop_flip(images, pad=3, flip=True, generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 7, (16, 2), generator=replay)
    mirror = torch.rand(16, generator=replay) < 0.5
    assert 0 < int(mirror.sum()) < 16
    assert torch.equal(result, reference_crop_flip(images, 3, offsets, mirror))
    assert result.is_contiguous(memory_format=torch.channels_last)


def test_no_pad_no_flip_is_identity() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(images, 0, False, torch.Generator().manual_seed(0)), images)


def test_normalizer_matches_float_formula() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = Normalizer(mean, std, torch.device("cpu"), channels_last=False)(images)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)
