"""Data sets as the loop sees them: uint8 image tensors (resident) or image files (folder), split three ways.

Every loader returns a `DataSet` whose train/val/test splits are carved deterministically from `seed`:
the validation split comes out of the training data (the search optimizes it); the test split is the
data set's own test set and is only loaded when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from precrop.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(UserError):
    """A data set that cannot be loaded: unknown name, missing files, bad options."""


@dataclass(frozen=True)
class TensorSplit:
    """A split held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> TensorSplit:
        """The rows at `index`."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return TensorSplit(self.images[idx], self.labels[idx])


@dataclass(frozen=True)
class FileSplit:
    """A split kept on disk: (path, label) pairs decoded by DataLoader workers."""

    samples: tuple[tuple[str, int], ...]

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, index: np.ndarray) -> FileSplit:
        """The samples at `index`."""
        return FileSplit(tuple(self.samples[int(i)] for i in index))


Split = TensorSplit | FileSplit


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: random crop after `pad` pixels of zero padding, optional horizontal flip.

    For file splits `pad` is ignored and RandomResizedCrop to the input size is used instead.
    """

    pad: int = 4
    flip: bool = True


@dataclass(frozen=True)
class DataSet:
    """Three splits plus what the model and the loop need to know about them."""

    name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split
    test: Split | None
    augmentation: Augmentation = field(default_factory=Augmentation)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def resident(self) -> bool:
        """True when every split is an in-memory tensor (the fast path applies)."""
        return isinstance(self.train, TensorSplit)

    def summary(self) -> str:
        """One line: sizes of the splits and the image shape."""
        test = f", test {len(self.test):,}" if self.test is not None else ""
        c, h, w = self.image_shape
        kind = "in memory" if self.resident else "from files"
        return (
            f"{self.name}: train {len(self.train):,}, val {len(self.val):,}{test}; "
            f"{self.num_classes} classes, {c}x{h}x{w}, {kind}"
        )


@dataclass(frozen=True)
class DataRequest:
    """What the user asked for. `val_fraction` of train becomes validation, stratified by class."""

    name: str
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    with_test: bool = False
    image_size: int | None = None
    resident: str = "auto"
    train_subset: int | None = None  # keep only this many training images (stratified): reduced schedules

    def validate(self) -> None:
        """Raise DataError naming a bad option."""
        if self.train_subset is not None and self.train_subset < 1:
            raise DataError(f"train_subset must be a positive number of images, got {self.train_subset}")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.resident not in ("auto", "yes", "no"):
            raise DataError(f"resident must be auto, yes or no, got {self.resident!r}")
        if self.image_size is not None and self.image_size < 1:
            raise DataError(f"image_size must be positive, got {self.image_size}")

    def check_subset(self, num_classes: int) -> None:
        """Raise DataError when `train_subset` cannot hold one training image of each of `num_classes`."""
        if self.train_subset is not None and self.train_subset < num_classes:
            raise DataError(f"train_subset {self.train_subset} is smaller than the {num_classes} classes of "
                            f"{self.name}: every class needs at least one training image")  # fmt: skip


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of every class held out (at least one per class), seeded."""
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        n_held = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        held.append(members[:n_held])
        keep.append(members[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def carve_validation(data: DataSet, fraction: float, seed: int) -> DataSet:
    """Move a stratified `fraction` of `data.train` into `data.val`."""
    labels = split_labels(data.train)
    keep, held = stratified_split(labels, fraction, seed)
    return replace(data, train=data.train.subset(keep), val=data.train.subset(held))


def split_labels(split: Split) -> np.ndarray:
    """Labels of a split as a numpy array."""
    if isinstance(split, TensorSplit):
        return split.labels.numpy()
    return np.array([label for _, label in split.samples], dtype=np.int64)


Loader = Callable[[DataRequest], DataSet]
LOADERS: dict[str, Loader] = {}


def register_loader(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make `load_dataset(name)` call the decorated function."""

    def wrap(loader: Loader) -> Loader:
        if name in LOADERS:
            raise ValueError(f"data set {name!r} is already registered")
        LOADERS[name] = loader
        return loader

    return wrap


def require_dir(path: str | None, what: str) -> Path:
    """`path` as an existing directory, or a DataError saying what was expected there."""
    if path is None:
        raise DataError(f"{what} needs --data-dir")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{what}: data directory {root} does not exist")
    return root
