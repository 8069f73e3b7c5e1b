"""`load_dataset`: a data set by name, from the loaders that register themselves (cifar, digits, folders,
synthetic).

Apart from trainers/datasets.py (the types and the registry) so that the loaders, which import the
registry, and the code that imports every loader are not one module importing itself through them.
"""

from __future__ import annotations

from dataclasses import replace

from trainers.datasets import LOADERS, DataError, DataRequest, DataSet, split_labels, stratified_split


def load_dataset(request: DataRequest) -> DataSet:
    """Load the data set `request.name`, with its validation split carved from train."""
    request.validate()
    _import_builtin_loaders()
    if request.name not in LOADERS:
        raise DataError(f"unknown data set {request.name!r}; valid: {', '.join(sorted(LOADERS))}")
    data = LOADERS[request.name](request)
    request.check_subset(data.num_classes)
    if request.train_subset is not None and request.train_subset < len(data.train):
        labels = split_labels(data.train)
        _, kept = stratified_split(labels, request.train_subset / len(labels), request.seed + 1)
        data = replace(data, train=data.train.subset(kept))
    return data


def dataset_names() -> list[str]:
    """Every registered data set name, sorted."""
    _import_builtin_loaders()
    return sorted(LOADERS)


def _import_builtin_loaders() -> None:
    from trainers import cifar, digits, imagefolder, synthetic  # noqa: F401  (they register themselves)
