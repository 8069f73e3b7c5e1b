"""Training throughput: our loop (resident uint8 data, on-device crop+flip) vs a plain DataLoader loop.

Both train the same freshly initialized model on the same images of the CIFAR-10 JPEG copy with the
same batch size and SGD settings, for two epochs over a random subset of the training set; we report
the second epoch's images/s. The plain loop is the usual tutorial recipe: torchvision ImageFolder with
RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize in DataLoader workers, fp32,
default memory format. "loader only" iterates each data pipeline for one epoch without a model.

Run: python benchmarks/throughput.py [--images 4096] [--device cpu|cuda] [--workers 2]
"""

from __future__ import annotations

import argparse
import platform
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from precrop.nn.zoo import REGISTRY
from precrop.textui import format_table
from trainers.cifar import CIFAR_MEAN, CIFAR_STD
from trainers.datasets import Augmentation, DataSet, FileSplit
from trainers.imagefolder import decode_all, list_samples
from trainers.loop import Trainer
from trainers.optim import resolve_device
from trainers.recipe import TrainConfig

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


def extracted_root(archive: Path, target: Path) -> Path:
    """The extracted CIFAR-10 JPEG folder (extracting the archive on first use)."""
    if not (target / "train").is_dir():
        if not archive.is_file():
            raise SystemExit(f"no data: {archive} is missing (pass --archive or --data-dir)")
        print(f"extracting {archive} into {target} ...", flush=True)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target


def fresh_model(arch: str) -> nn.Module:
    """The dense model with the family's init, seeded."""
    spec = REGISTRY.get(arch)
    torch.manual_seed(0)
    model = spec.build(10)
    if spec.init is not None:
        spec.init(model)
    return model


def ours(files: FileSplit, index: np.ndarray, args: argparse.Namespace) -> tuple[float, float, float]:
    """(decode seconds, loader-only images/s, training images/s of the 2nd epoch) for our loop."""
    start = time.perf_counter()
    split = decode_all(files.subset(index))
    decode_s = time.perf_counter() - start
    val = split.subset(np.arange(min(512, len(split))))
    classes = tuple(str(i) for i in range(10))
    data = DataSet("cifar10-jpg", classes, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, split, val, None, Augmentation(4, True))
    config = TrainConfig(epochs=2, batch_size=args.batch_size, lr=0.1, device=args.device, warmup_epochs=0)
    trainer = Trainer(fresh_model(args.arch), data, config)
    start = time.perf_counter()
    seen = sum(len(y) for _, y in trainer.train_batches.train_epoch(torch.Generator().manual_seed(0)))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    loader_rate = seen / (time.perf_counter() - start)
    result = trainer.run()
    return decode_s, loader_rate, result.history[-1]["images_per_s"]


def plain_loader(root: Path, index: np.ndarray, args: argparse.Namespace) -> torch.utils.data.DataLoader[object]:
    """The tutorial pipeline: PIL decode + transforms per sample in DataLoader workers."""
    import torchvision
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])  # fmt: skip
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    subset = torch.utils.data.Subset(dataset, index.tolist())
    return torch.utils.data.DataLoader(
        subset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
        pin_memory=args.device.startswith("cuda"), persistent_workers=args.workers > 0,
    )  # fmt: skip


def plain(root: Path, index: np.ndarray, args: argparse.Namespace) -> tuple[float, float]:
    """(loader-only images/s, training images/s of the 2nd epoch) for the plain loop."""
    device = resolve_device(args.device)
    loader = plain_loader(root, index, args)
    start = time.perf_counter()
    seen = sum(len(y) for _, y in loader)
    loader_rate = seen / (time.perf_counter() - start)
    model = fresh_model(args.arch).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rate = 0.0
    for _ in range(2):
        model.train()
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = seen / (time.perf_counter() - start)
    return loader_rate, rate


def main() -> None:
    """Run both loops on the same subset and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--data-dir", type=Path, default=Path("data/cifar10-jpg"))
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument("--images", type=int, default=4096, help="training images per epoch (random subset)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    root = extracted_root(args.archive, args.data_dir)
    _, files = list_samples(root / "train")
    total = len(files)
    index = np.sort(np.random.default_rng(0).choice(total, size=min(args.images, total), replace=False))
    machine = f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"{machine}, device {args.device}, {args.arch}, {len(index)} images/epoch, batch {args.batch_size}")
    decode_s, our_loader, our_train = ours(files, index, args)
    plain_loader_rate, plain_train = plain(root, index, args)
    rows = [
        ["ours (resident, on-device aug)", f"{our_loader:,.0f}", f"{our_train:,.0f}", f"{decode_s:.1f}"],
        [f"plain DataLoader ({args.workers} workers)", f"{plain_loader_rate:,.0f}", f"{plain_train:,.0f}", "-"],
        ["ratio ours/plain", f"{our_loader / plain_loader_rate:.2f}", f"{our_train / plain_train:.2f}", ""],
    ]
    print(format_table(["loop", "loader only img/s", "training img/s", "one-time decode s"], rows))


if __name__ == "__main__":
    main()
