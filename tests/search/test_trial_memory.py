"""A trial process that Tune reuses must not grow from trial to trial (trainers/memory.py says why it did:
glibc kept what torch freed, and latency timing kept even the largest buffers for good).

The search test is `-m memory` (about 4 minutes on 2 cores; CI runs it); the helpers' tests run by default."""

from __future__ import annotations

import copy
import ctypes
from pathlib import Path

import pytest
import torch

from search.latency import time_models
from search.schema import Metric, Tag
from tests.search.conftest import TINY_CONFIG, run_precrop, search_runs, write_config
from trainers import memory

GROWTH_LIMIT_MB = 300


def test_rss_and_peak_are_read_from_proc() -> None:
    if memory.rss_mb() is None:
        pytest.skip("no /proc/self/status here")
    assert memory.reset_peak_rss()
    before = memory.peak_rss_mb()
    block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
    peak = memory.peak_rss_mb()
    del block
    assert before is not None and peak is not None and peak - before >= 60
    rss = memory.rss_mb()
    assert rss is not None and rss <= peak


def _mmaps_large_blocks() -> bool | None:
    """Whether glibc now maps a block just above its adaptive ceiling (given back on free) or serves it from
    the heap (kept); None without glibc's mallinfo2."""
    libc = memory._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]  # fmt: skip

    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = memory.ADAPTIVE_MMAP_CEILING + (1 << 20)
    mapped_before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    mapped = libc.mallinfo2().hblkhd - mapped_before
    libc.free(block)
    return bool(mapped >= size)


def test_timing_raises_the_thresholds_only_while_it_times() -> None:
    """After a timing, a 33 MiB buffer is mapped again (given back on free) instead of staying on the heap."""
    if _mmaps_large_blocks() is None:
        pytest.skip("not glibc")
    with memory.freed_memory_kept() as applied:
        assert applied and _mmaps_large_blocks() is False
    assert _mmaps_large_blocks() is True
    time_models([torch.nn.Conv2d(3, 8, 3)], [(3, 8, 8)], batch=2, rounds=1)
    assert _mmaps_large_blocks() is True


def test_release_gives_freed_heap_memory_back() -> None:
    if memory._glibc() is None or memory.rss_mb() is None:
        pytest.skip("not glibc on Linux")
    with memory.freed_memory_kept():  # heap allocations, as timing makes them
        blocks = [torch.ones(8 << 20, dtype=torch.uint8) for _ in range(32)]  # 256 MiB in 8 MiB tensors
        del blocks[:-1]  # all but the last: the top of the heap stays in use, so no automatic trim
        held = memory.rss_mb()
        memory.release_freed_memory()
        released = memory.rss_mb()
    assert held is not None and released is not None and held - released >= 200


@pytest.mark.memory
@pytest.mark.ray
def test_ten_mobilenetv2_trials_in_one_process_do_not_grow(tmp_path: Path) -> None:
    """Issue 27's case: one trial at a time, allocators that build, score (SynFlow) and time MobileNetV2."""
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "memory"
    config["model"] = {"arch": "mobilenetv2_cifar"}
    config["data"] = {"name": "synthetic", "image_size": 32}
    config["space"].update(allocators=["synexp", "uniform", "synflow", "erk"], budget=[0.3, 0.7], epochs=1,
                           batch_size=[128])  # fmt: skip
    config["search"] = {"trials": 10, "concurrency": 1, "seed": 0}
    config["asha"] = {"enabled": False}
    result = run_precrop(tmp_path, "search", str(write_config(tmp_path, config)), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = sorted(search_runs(tmp_path, "memory").children, key=lambda run: run.info.start_time)
    assert len(trials) == 10
    assert len({run.data.tags[Tag.WORKER_PID] for run in trials}) == 1, "Tune did not reuse one process"
    start = [run.data.metrics[Metric.WORKER_RSS_START_MB] for run in trials]
    peaks = [run.data.metrics[Metric.WORKER_RSS_PEAK_MB] for run in trials]
    # the start of trial k+1 is what trial k left behind; from the third trial on, the first two set the level
    growth = max(start[3:]) - start[2]
    print("worker RSS at each trial's start (MiB):", [round(x) for x in start], "peaks:", [round(x) for x in peaks])
    assert growth <= GROWTH_LIMIT_MB, f"the trial process grew by {growth:.0f} MiB: {start}"
    assert all(peak > first for peak, first in zip(peaks, start, strict=True))
