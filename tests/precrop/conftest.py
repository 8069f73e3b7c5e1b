"""Shared helpers: traced layer tables cached per session (tracing takes about a second), and probes."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pytest
import torch

from precrop.methods.base import Probe
from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import dense_plan
from precrop.width.costmodel import LayerTable


@cache
def cached_table(arch: str) -> LayerTable:
    """The dense layer table of `arch` at its default classes and input size."""
    return layer_table(arch)


def make_probe(arch: str, seed: int = 0, batches: int = 2, batch: int = 8) -> Probe:
    """The seeded dense model of `arch` and a few synthetic labelled batches."""
    table = cached_table(arch)
    generator = torch.Generator().manual_seed(100 + seed)
    data = tuple(
        (torch.randn(batch, *table.input_shape, generator=generator),
         torch.randint(0, table.num_classes, (batch,), generator=generator))
        for _ in range(batches)
    )  # fmt: skip
    return Probe(build_from_plan(dense_plan(table), seed=seed), data, seed)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's small, batch-1 passes single-threaded (2-thread OpenMP stalls on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
