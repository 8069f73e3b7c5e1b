"""scikit-learn's bundled 8x8 digits: the offline quickstart data set.

The 1,797 grey images (values 0..16) are scaled to uint8 and repeated to three channels so every model
in the zoo takes them unchanged. A fixed 20% of each class (seed 0, independent of the run's seed) is
the test split, so test numbers from different runs are comparable.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from trainers.datasets import Augmentation, DataRequest, DataSet, TensorSplit, register_loader, stratified_split

TEST_FRACTION = 0.2
TEST_SEED = 0


def digits_tensors() -> TensorSplit:
    """All 1,797 digits as a uint8 (N, 3, 8, 8) tensor and their labels."""
    pixels, target = digits_arrays()
    grey = np.rint(pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(grey).unsqueeze(1).repeat(1, 3, 1, 1).contiguous()
    return TensorSplit(images, torch.from_numpy(target.astype(np.int64)))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The (1797, 64) pixel values 0..16 and the labels, read from the file scikit-learn bundles.

    `sklearn.datasets.load_digits` returns the same arrays (a test checks it), but importing
    scikit-learn costs about a CPU-second (sklearn.base pulls in scipy.stats) in every driver and trial
    process of a digits search, for a 60 kB CSV. Locating the package does not import it; where the file
    is not found (a different scikit-learn layout), the library's loader is used.
    """
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target


@register_loader("digits")
def load_digits_dataset(request: DataRequest) -> DataSet:
    """Digits with a fixed test split and a seeded, stratified validation split."""
    everything = digits_tensors()
    train_idx, test_idx = stratified_split(everything.labels.numpy(), TEST_FRACTION, TEST_SEED)
    pool = everything.subset(train_idx)
    keep, val = stratified_split(pool.labels.numpy(), request.val_fraction, request.seed)
    mean = float(pool.images.float().mean() / 255.0)
    std = float(pool.images.float().std() / 255.0)
    return DataSet(
        name="digits",
        classes=tuple(str(i) for i in range(10)),
        image_shape=(3, 8, 8),
        mean=(mean,) * 3,
        std=(std,) * 3,
        train=pool.subset(keep),
        val=pool.subset(val),
        test=everything.subset(test_idx) if request.with_test else None,
        augmentation=Augmentation(pad=1, flip=False),
    )
