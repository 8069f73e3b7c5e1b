"""A generated, learnable data set for tests: each class is a fixed random pattern plus noise."""

from __future__ import annotations

import torch

from trainers.datasets import Augmentation, DataRequest, DataSet, TensorSplit, carve_validation, register_loader

NUM_CLASSES = 4
TRAIN_PER_CLASS = 64
TEST_PER_CLASS = 16
DEFAULT_SIZE = 16


def synthetic_split(per_class: int, size: int, noise_seed: int) -> TensorSplit:
    """`per_class` noisy copies of each class prototype; the prototypes are the same for every split."""
    prototypes = torch.rand(NUM_CLASSES, 3, size, size, generator=torch.Generator().manual_seed(1234)) * 255
    generator = torch.Generator().manual_seed(noise_seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 3, size, size, generator=generator) * 60
    images = (prototypes[labels] + noise).clamp(0, 255).round().to(torch.uint8)
    return TensorSplit(images, labels)


@register_loader("synthetic")
def load_synthetic(request: DataRequest) -> DataSet:
    """4 classes of 3x16x16 images (side `image_size` if given); the same prototypes for every seed."""
    size = request.image_size or DEFAULT_SIZE
    train = synthetic_split(TRAIN_PER_CLASS, size, noise_seed=1)
    test = synthetic_split(TEST_PER_CLASS, size, noise_seed=2)
    data = DataSet(
        name="synthetic",
        classes=tuple(f"class{i}" for i in range(NUM_CLASSES)),
        image_shape=(3, size, size),
        mean=(0.5, 0.5, 0.5),
        std=(0.3, 0.3, 0.3),
        train=train,
        val=train,
        test=test if request.with_test else None,
        augmentation=Augmentation(pad=max(1, size // 8), flip=True),
    )
    return carve_validation(data, request.val_fraction, request.seed)
