"""CIFAR-10 and CIFAR-100 read from the original "python version" pickle batches.

We read the batches ourselves (torchvision's dataset classes refuse files whose MD5 differs from the
official archive, which rules out testing on small files in the same format) and only use torchvision to
download, when the user allows it. The batches are pickles, read by an unpickler that accepts only numpy
arrays and plain containers.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.datasets import (
    DataError,
    DataRequest,
    DataSet,
    TensorSplit,
    carve_validation,
    register_loader,
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class CifarLayout:
    """File names of one CIFAR variant inside its extracted folder."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str


CIFAR10 = CifarLayout(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch", "batches.meta", "labels", "label_names",
)  # fmt: skip
CIFAR100 = CifarLayout("cifar100", "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names")


def _get(entry: dict[Any, Any], key: str) -> Any:
    """Batches written by Python 2 have str keys under latin1, others bytes keys: accept both."""
    if key in entry:
        return entry[key]
    if key.encode() in entry:
        return entry[key.encode()]
    raise DataError(f"CIFAR batch has no {key!r} entry")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR batch holds (dicts, lists, bytes, numpy arrays) and refuses anything else,
    so a tampered file cannot run code when it is loaded."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 rebuild bytes
    })  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        """Only the numpy array machinery; anything else is an UnpicklingError."""
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        with path.open("rb") as handle:
            entry = _BatchUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {exc}") from exc
    if not isinstance(entry, dict):
        raise DataError(f"CIFAR batch {path} is not a dictionary")
    return entry


def read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> TensorSplit:
    """Concatenate pickled batches into uint8 (N, 3, 32, 32) images and int64 labels."""
    images, labels = [], []
    for name in files:
        entry = _unpickle(folder / name)
        data = np.asarray(_get(entry, "data"), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"CIFAR batch {folder / name} has data of shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(_get(entry, label_key), dtype=np.int64))
    return TensorSplit(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def find_folder(request: DataRequest, layout: CifarLayout) -> Path:
    """The extracted folder, downloading it first when missing and allowed."""
    root = Path(request.data_dir or "data").expanduser()
    for candidate in (root / layout.folder, root):
        if (candidate / layout.train_files[0]).is_file():
            return candidate
    if not request.download:
        raise DataError(
            f"{layout.name} not found: expected {root / layout.folder / layout.train_files[0]}; "
            "pass --download to fetch it (needs internet) or point --data-dir at a copy"
        )
    _download(root, layout)
    return root / layout.folder


def _download(root: Path, layout: CifarLayout) -> None:
    """Download and extract under an exclusive lock: trials starting together on one node share `root`."""
    import fcntl

    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    dataset_class = torchvision.datasets.CIFAR10 if layout is CIFAR10 else torchvision.datasets.CIFAR100
    with open(root / f".{layout.folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (root / layout.folder / layout.train_files[0]).is_file():
            return  # another trial finished the download while this one waited
        try:
            dataset_class(str(root), train=True, download=True)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise DataError(f"could not download {layout.name} into {root}: {exc}") from exc


def load_cifar(request: DataRequest, layout: CifarLayout) -> DataSet:
    """CIFAR with a validation split carved from the 50,000 training images."""
    folder = find_folder(request, layout)
    meta = _unpickle(folder / layout.meta_file) if (folder / layout.meta_file).is_file() else {}
    train = read_batches(folder, layout.train_files, layout.label_key)
    classes = tuple(_get(meta, layout.names_key)) if meta else tuple(
        str(i) for i in range(int(train.labels.max()) + 1)
    )  # fmt: skip
    test = read_batches(folder, (layout.test_file,), layout.label_key) if request.with_test else None
    data = DataSet(layout.name, classes, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, train, train, test)
    return carve_validation(data, request.val_fraction, request.seed)


@register_loader("cifar10")
def load_cifar10(request: DataRequest) -> DataSet:
    """CIFAR-10 from `data_dir` (the folder holding cifar-10-batches-py, or that folder itself)."""
    return load_cifar(request, CIFAR10)


@register_loader("cifar100")
def load_cifar100(request: DataRequest) -> DataSet:
    """CIFAR-100 (fine labels) from `data_dir`."""
    return load_cifar(request, CIFAR100)
