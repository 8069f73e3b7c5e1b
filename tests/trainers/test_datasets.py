"""Data sets: CIFAR pickle batches, image folders, digits, synthetic, and the seeded validation split."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg, write_png

from trainers.batches import FileBatches, ResidentBatches
from trainers.datasets import DataError, DataRequest, FileSplit, TensorSplit, stratified_split
from trainers.load import load_dataset


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 20) -> dict[str, np.ndarray]:
    """Five training batches, a test batch and the meta file, laid out and pickled like the real archive."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written: dict[str, np.ndarray] = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = _cifar_images(per_batch, i)
        labels = [(j + i) % 10 for j in range(per_batch)]
        # the real batches were pickled by Python 2: bytes keys under encoding="bytes"
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = data
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def test_cifar10_reads_the_real_pickle_format(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    data = load_dataset(DataRequest("cifar10", data_dir=str(tmp_path), val_fraction=0.1, with_test=True))
    assert data.classes[0] == "airplane" and data.num_classes == 10
    assert data.image_shape == (3, 32, 32)
    assert isinstance(data.train, TensorSplit) and isinstance(data.val, TensorSplit)
    assert len(data.train) + len(data.val) == 100
    assert len(data.val) == 10  # one per class
    assert data.test is not None and len(data.test) == 20
    # row layout of the format: 1024 red, then 1024 green, then 1024 blue values, each row-major
    first = written["test_batch"][0]
    assert isinstance(data.test, TensorSplit)
    assert int(data.test.images[0, 0, 0, 1]) == int(first[1])
    assert int(data.test.images[0, 1, 2, 3]) == int(first[1024 + 2 * 32 + 3])
    assert int(data.test.images[0, 2, 31, 31]) == int(first[3071])
    assert data.test.labels[:3].tolist() == [5, 6, 7]


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 40), ("test", 8)):
        entry = {"data": _cifar_images(n, 1), "fine_labels": [j % 4 for j in range(n)], "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a", "b", "c", "d"]}, protocol=2))
    data = load_dataset(DataRequest("cifar100", data_dir=str(folder), val_fraction=0.3))
    assert data.classes == ("a", "b", "c", "d")
    assert len(data.train) == 28 and len(data.val) == 12 and data.test is None


def test_missing_cifar_without_download_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar10 not found: expected .*data_batch_1; pass --download"):
        load_dataset(DataRequest("cifar10", data_dir=str(tmp_path)))


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(DataError, match="unknown data set 'mnist'; valid: cifar10, cifar100, digits, imagefolder"):
        load_dataset(DataRequest("mnist"))


def write_folder(root: Path, split: str, per_class: int, size: int, fmt: str) -> None:
    for c, colour in enumerate(((250, 10, 10), (10, 250, 10), (10, 10, 250))):
        folder = root / split / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).repeat(1, size, size)
            image[:, 0, 0] = i  # makes files distinguishable
            if fmt == "png":
                write_png(image, str(folder / f"{i:03d}.png"))
            else:
                (folder / f"{i:03d}.jpg").write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())


def test_imagefolder_small_images_become_resident(tmp_path: Path) -> None:
    write_folder(tmp_path, "train", 10, 12, "png")
    write_folder(tmp_path, "test", 2, 12, "jpg")
    data = load_dataset(DataRequest("imagefolder", data_dir=str(tmp_path), val_fraction=0.2, with_test=True))
    assert data.classes == ("class_0", "class_1", "class_2")
    assert data.resident and isinstance(data.train, TensorSplit)
    assert data.image_shape == (3, 12, 12)
    assert len(data.train) == 24 and len(data.val) == 6
    assert data.test is not None and len(data.test) == 6
    # PNG is lossless: every pixel but the marker equals the class colour
    for image, label in zip(data.train.images, data.train.labels, strict=True):
        expected = [250 if ch == int(label) else 10 for ch in range(3)]
        assert image[:, 5, 7].tolist() == expected
    assert data.mean[0] == pytest.approx((250 + 10 + 10) / 3 / 255, abs=0.01)


def test_imagefolder_from_files_goes_through_dataloader(tmp_path: Path) -> None:
    write_folder(tmp_path, "train", 8, 40, "jpg")
    write_folder(tmp_path, "val", 2, 40, "jpg")
    request = DataRequest("imagefolder", data_dir=str(tmp_path), resident="no", image_size=32, with_test=True)
    data = load_dataset(request)
    assert isinstance(data.train, FileSplit) and data.image_shape == (3, 32, 32)
    batches = FileBatches(data.train, data, torch.device("cpu"), batch_size=4, channels_last=False, workers=0)
    images, labels = next(iter(batches.train_epoch(torch.Generator().manual_seed(0))))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.long
    assert data.test is not None
    eval_batches = FileBatches(data.test, data, torch.device("cpu"), batch_size=100, channels_last=False, workers=0)
    assert sum(len(y) for _, y in eval_batches.eval_batches()) == 6


def test_imagefolder_without_train_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no train/ folder"):
        load_dataset(DataRequest("imagefolder", data_dir=str(tmp_path)))


def test_digits_splits() -> None:
    data = load_dataset(DataRequest("digits", seed=0, with_test=True))
    assert (len(data.train), len(data.val)) == (1295, 143)
    assert data.test is not None and len(data.test) == 359
    assert data.image_shape == (3, 8, 8) and data.num_classes == 10
    assert isinstance(data.train, TensorSplit)
    assert int(data.train.images.max()) == 255 and data.train.images.dtype == torch.uint8
    other_seed = load_dataset(DataRequest("digits", seed=1, with_test=True))
    assert data.test is not None and other_seed.test is not None
    assert torch.equal(data.test.labels, other_seed.test.labels)  # the test split never moves


def test_digits_read_without_scikit_learn_equal_its_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    from trainers import digits

    pixels, target = digits.digits_arrays()
    bunch = load_digits()
    assert pixels.shape == (1797, 64) and np.array_equal(pixels, bunch.data)
    assert np.array_equal(target, bunch.target)
    # a scikit-learn without the bundled file: the library's own loader answers the same
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    fallback = digits.digits_arrays()
    assert np.array_equal(fallback[0], pixels) and np.array_equal(fallback[1], target)


def test_loading_digits_does_not_import_scikit_learn() -> None:
    code = "import sys; from trainers.digits import digits_tensors; digits_tensors(); print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


def test_validation_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(5), 20)
    keep, held = stratified_split(labels, 0.1, seed=4)
    assert len(set(keep) & set(held)) == 0 and len(keep) + len(held) == 100
    assert np.bincount(labels[held]).tolist() == [2] * 5
    assert np.array_equal(held, stratified_split(labels, 0.1, seed=4)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.1, seed=5)[1])


def test_resident_batches_cover_the_split_once_per_epoch() -> None:
    data = load_dataset(DataRequest("synthetic", seed=0))
    assert isinstance(data.train, TensorSplit)
    batches = ResidentBatches(data.train, data, torch.device("cpu"), batch_size=32, channels_last=True)
    seen = [y for _, y in batches.train_epoch(torch.Generator().manual_seed(0))]
    assert len(seen) == len(data.train) // 32
    first, _ = next(iter(batches.train_epoch(torch.Generator().manual_seed(0))))
    assert first.is_contiguous(memory_format=torch.channels_last)
    ordered = torch.cat([y for _, y in batches.eval_batches()])
    assert torch.equal(ordered, data.train.labels)


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path: Path) -> None:
    import os

    from trainers.cifar import _unpickle

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load posix\.system from a CIFAR batch"):
        _unpickle(path)
    assert not (tmp_path / "pwned").exists()
