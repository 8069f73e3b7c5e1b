"""Batch sources: resident tensors (the fast path) and DataLoader over files (large images).

Both yield normalized float batches on the training device. The resident source shuffles with a CPU
generator that the loop owns, so an interrupted run resumes with exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from trainers.augment import Normalizer, random_crop_flip
from trainers.datasets import Augmentation, DataSet, FileSplit, Split, TensorSplit

# evaluation of file-based data: resize the shorter side to size / EVAL_CROP_FRACTION, then center-crop
# (trainers/checkpoint.py's Preprocess records the same resize with every saved model)
EVAL_CROP_FRACTION = 0.875

Batch = tuple[torch.Tensor, torch.Tensor]
# what data-driven methods (SNIP, GraSP, PFS, PruneNet) look at: a few augmented training batches
PROBE_BATCHES = 8
PROBE_BATCH_SIZE = 64


class BatchSource(Protocol):
    """What the loop needs from data: shuffled training batches per epoch and ordered eval batches."""

    num_samples: int

    def steps_per_epoch(self) -> int:
        """Training steps in one epoch."""
        ...

    def train_epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled, augmented training batches (incomplete last batch dropped)."""
        ...

    def eval_batches(self) -> Iterator[Batch]:
        """Every sample once, in order, not augmented."""
        ...


class ResidentBatches:
    """A whole split as uint8 on the device; shuffle, crop, flip and normalize per batch there."""

    def __init__(
        self, split: TensorSplit, data: DataSet, device: torch.device, batch_size: int, channels_last: bool
    ) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.num_samples = len(split)
        self.batch_size = batch_size
        self.augmentation: Augmentation = data.augmentation
        self.normalize = Normalizer(data.mean, data.std, device, channels_last)

    def steps_per_epoch(self) -> int:
        """Full batches per epoch (one short batch when the split is smaller than a batch)."""
        return max(1, self.num_samples // self.batch_size)

    def train_epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled, augmented batches; all randomness comes from `generator`."""
        order = torch.randperm(self.num_samples, generator=generator).to(self.images.device)
        size = min(self.batch_size, self.num_samples)
        aug = self.augmentation
        for step in range(self.steps_per_epoch()):
            idx = order[step * size : (step + 1) * size]
            images = random_crop_flip(self.images[idx], aug.pad, aug.flip, generator)
            yield self.normalize(images), self.labels[idx]

    def eval_batches(self) -> Iterator[Batch]:
        """Ordered, unaugmented batches."""
        for start in range(0, self.num_samples, self.batch_size):
            end = start + self.batch_size
            yield self.normalize(self.images[start:end]), self.labels[start:end]


class FileBatches:
    """A split on disk read by DataLoader workers (decode, random-resized crop, flip) as uint8."""

    def __init__(
        self,
        split: FileSplit,
        data: DataSet,
        device: torch.device,
        batch_size: int,
        channels_last: bool,
        workers: int,
    ) -> None:
        self.split = split
        self.num_samples = len(split)
        self.size = data.image_shape[1]
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.flip = data.augmentation.flip
        self.normalize = Normalizer(data.mean, data.std, device, channels_last)

    def steps_per_epoch(self) -> int:
        """Full batches per epoch."""
        return max(1, self.num_samples // self.batch_size)

    def train_epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled batches; the sampler and the workers' seeds are drawn from `generator`."""
        yield from self._iterate(train=True, generator=generator)

    def eval_batches(self) -> Iterator[Batch]:
        """Resize to 1/EVAL_CROP_FRACTION of the input size, center crop, in order."""
        yield from self._iterate(train=False, generator=None)

    def _iterate(self, train: bool, generator: torch.Generator | None) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _FileDataset(self.split, self.size, train, self.flip),
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and self.num_samples >= self.batch_size,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            persistent_workers=False,
        )
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            yield self.normalize(images), labels.to(self.device, non_blocking=True)


class _FileDataset(torch.utils.data.Dataset[Batch]):
    """Decode one file to uint8 and transform it (runs in DataLoader workers)."""

    def __init__(self, split: FileSplit, size: int, train: bool, flip: bool) -> None:
        from torchvision.transforms import v2

        self.samples = split.samples
        if train:
            steps: list[v2.Transform] = [v2.RandomResizedCrop(size, antialias=True)]
            if flip:
                steps.append(v2.RandomHorizontalFlip())
        else:
            steps = [v2.Resize(round(size / EVAL_CROP_FRACTION), antialias=True), v2.CenterCrop(size)]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Batch:
        from torchvision.io import ImageReadMode, decode_image, read_file

        from trainers.imagefolder import quiet_torchvision_io

        path, label = self.samples[index]
        with quiet_torchvision_io():
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        return self.transform(image), torch.tensor(label)


def make_batches(
    split: Split, data: DataSet, device: torch.device, batch_size: int, channels_last: bool, workers: int
) -> BatchSource:
    """The right source for `split`: resident for tensors, DataLoader for files."""
    if isinstance(split, TensorSplit):
        return ResidentBatches(split, data, device, batch_size, channels_last)
    return FileBatches(split, data, device, batch_size, channels_last, workers)


def probe_batches(data: DataSet, count: int, batch_size: int, seed: int) -> tuple[Batch, ...]:
    """`count` augmented, normalized training batches on the CPU: what data-driven pruning methods score."""
    source = make_batches(data.train, data, torch.device("cpu"), batch_size, channels_last=False, workers=0)
    batches = source.train_epoch(torch.Generator().manual_seed(seed))
    return tuple((x.contiguous(), y) for _, (x, y) in zip(range(count), batches, strict=False))
