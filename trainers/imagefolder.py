"""Class-per-folder image data: `ROOT/train/<class>/*` plus `ROOT/val/<class>/*` or `ROOT/test/<class>/*`.

Small images of one size (CIFAR-10 as JPEGs, say) are decoded once into a uint8 tensor and take the
resident fast path; anything else (ImageNet) stays on disk and goes through DataLoader workers.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from trainers.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    DataRequest,
    DataSet,
    FileSplit,
    Split,
    TensorSplit,
    carve_validation,
    register_loader,
    require_dir,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RESIDENT_MAX_SIDE = 64
RESIDENT_MAX_BYTES = 4 << 30
DECODE_CHUNK = 2048
DEFAULT_IMAGE_SIZE = 224


@contextlib.contextmanager
def quiet_torchvision_io() -> Iterator[None]:
    """Silence torchvision 0.29's per-call notice that its image codecs will move to TorchCodec.

    The codecs still work (and batched JPEG decoding is about 5x faster than PIL here); the notice
    would otherwise print once per decoded batch.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
        yield


def list_samples(folder: Path, classes: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], FileSplit]:
    """Class names (sorted sub-folders, or `classes`) and every image file below them with its label."""
    names = classes or tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not names:
        raise DataError(f"no class folders in {folder}")
    index = {name: i for i, name in enumerate(names)}
    samples: list[tuple[str, int]] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index:
            raise DataError(f"{folder} has class folder {sub.name!r} that the training split lacks")
        files = sorted(f for f in sub.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        samples.extend((str(f), index[sub.name]) for f in files)
    if not samples:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return names, FileSplit(tuple(samples))


def decode_all(split: FileSplit) -> TensorSplit:
    """Decode every file to uint8 RGB (batched JPEG decoding); all images must share one size."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

    images: list[torch.Tensor] = []
    paths = [p for p, _ in split.samples]
    for start in range(0, len(paths), DECODE_CHUNK):
        chunk = paths[start : start + DECODE_CHUNK]
        with quiet_torchvision_io():
            raw = [read_file(p) for p in chunk]
            if all(p.lower().endswith((".jpg", ".jpeg")) for p in chunk):
                images.extend(decode_jpeg(raw, mode=ImageReadMode.RGB))
            else:
                images.extend(decode_image(r, mode=ImageReadMode.RGB) for r in raw)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise DataError(f"images differ in size ({sorted(shapes)[:3]}...): use --resident no")
    labels = torch.tensor([label for _, label in split.samples], dtype=torch.long)
    return TensorSplit(torch.stack(images), labels)


def probe_shape(path: str) -> tuple[int, int, int]:
    """(C, H, W) of one image, read from its header where the format allows."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    with quiet_torchvision_io():
        c, h, w = decode_image(read_file(path), mode=ImageReadMode.RGB).shape
    return int(c), int(h), int(w)


def should_be_resident(request: DataRequest, train: FileSplit) -> bool:
    """Resident when asked, or (auto) when images are small enough to keep the whole set in memory."""
    if request.resident != "auto":
        return request.resident == "yes"
    c, h, w = probe_shape(train.samples[0][0])
    return max(h, w) <= RESIDENT_MAX_SIDE and len(train) * c * h * w <= RESIDENT_MAX_BYTES


def eval_folder(root: Path) -> Path:
    """`val/` if present, else `test/`."""
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root} has no val/ or test/ folder next to train/")


@register_loader("imagefolder")
def load_imagefolder(request: DataRequest) -> DataSet:
    """ImageNet-style folders; the held-out folder (val/ or test/) is the test split."""
    root = require_dir(request.data_dir, "imagefolder")
    if not (root / "train").is_dir():
        raise DataError(f"{root} has no train/ folder (expected {root}/train/<class>/<image>)")
    classes, train = list_samples(root / "train")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} has only class folder {classes[0]!r}; a classifier needs at least 2 classes")
    _, test = list_samples(eval_folder(root), classes) if request.with_test else (classes, None)
    train_split: Split = train
    test_split: Split | None = test
    if should_be_resident(request, train):
        resident = decode_all(train)
        train_split, test_split = resident, decode_all(test) if test is not None else None
        _, height, width = resident.images.shape[1:]
        if request.image_size is not None and request.image_size != height:
            raise DataError(f"resident images are {height}px; --image-size {request.image_size} needs --resident no")
        mean, std = _channel_stats(resident)
    else:
        height = width = request.image_size or DEFAULT_IMAGE_SIZE
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    data = DataSet(
        name="imagefolder", classes=classes, image_shape=(3, int(height), int(width)), mean=mean, std=std,
        train=train_split, val=train_split, test=test_split,
    )  # fmt: skip
    return carve_validation(data, request.val_fraction, request.seed)


def _channel_stats(split: TensorSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the training images, in [0, 1] units."""
    sample = split.images[:: max(1, len(split) // 10000)].float() / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())
