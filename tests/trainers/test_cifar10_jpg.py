"""The real CIFAR-10 JPEG copy (../shared/data) through the imagefolder loader; skipped when absent."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

from trainers.datasets import DataRequest, TensorSplit
from trainers.load import load_dataset

ARCHIVE = Path(os.environ.get("PRECROP_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
ARCHIVE = ARCHIVE / "cifar10-jpg.tar.gz"

pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"no CIFAR-10 JPEG copy at {ARCHIVE}")


def test_cifar10_jpeg_copy_loads_resident_with_all_splits(tmp_path: Path) -> None:
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    data = load_dataset(DataRequest("imagefolder", data_dir=str(tmp_path), val_fraction=0.1, with_test=True))
    assert data.resident and data.image_shape == (3, 32, 32)
    assert data.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert (len(data.train), len(data.val)) == (45000, 5000)
    assert data.test is not None and len(data.test) == 10000
    assert isinstance(data.test, TensorSplit)
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    # per-channel statistics close to the published CIFAR-10 ones (JPEG shifts them slightly)
    assert data.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=0.01)
