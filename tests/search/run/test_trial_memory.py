"""A trial process that Tune reuses must not grow from trial to trial (trainers/memory.py says why it did:
glibc kept what torch freed, and latency timing kept even the largest buffers for good).

The search test is `-m memory` (about 4 minutes on 2 cores; CI runs it); the helpers' tests run by default."""

from __future__ import annotations

import copy
import json
import mmap
import subprocess
import sys
from pathlib import Path

import pytest

from search.spec.schema import Metric, Tag
from tests.search.conftest import ROOT, TINY_CONFIG, run_precrop, search_env, search_runs, write_config
from trainers import memory

GROWTH_LIMIT_MB = 300


def test_rss_and_peak_are_read_from_proc() -> None:
    if memory.rss_mb() is None:
        pytest.skip("no /proc/self/status here")
    assert memory.reset_peak_rss()
    before = memory.peak_rss_mb()
    # 64 MiB of fresh pages, each touched: an anonymous map, not the heap, which in a process that ran other
    # tests (a pytest-xdist worker) may hand back pages that are resident already and so raise no peak
    size = 64 << 20
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    peak = memory.peak_rss_mb()
    block.close()
    assert before is not None and peak is not None and peak - before >= 60
    rss = memory.rss_mb()
    assert rss is not None and rss <= peak


# Run in a fresh interpreter: glibc serves a request from a free chunk of the heap when one is large enough,
# whatever its mmap threshold, so in a process that has run other tests the probe would read that history
# (it did in CI, after the full suite), not the thresholds.
GLIBC_PROBE = """
import ctypes, json, sys
import torch
from search.run.latency import time_models
from trainers import memory

libc = memory._glibc()
if libc is None or not hasattr(libc, "mallinfo2"):
    print(json.dumps(None)); sys.exit()

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mmaps_large_blocks():
    # does glibc map a 768 MiB block (given back on free) or serve it from the heap? Above the adaptive ceiling,
    # below the kept threshold, and larger than any free chunk this script leaves (those are reused first);
    # never touched, so it costs no memory
    size = 768 << 20
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    mapped = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return mapped >= size

seen = {"start": mmaps_large_blocks()}
with memory.freed_memory_kept() as applied:
    seen["applied"] = applied
    seen["inside"] = mmaps_large_blocks()
    blocks = [torch.ones(8 << 20, dtype=torch.uint8) for _ in range(32)]  # 256 MiB of heap, as timing makes
    del blocks[:-1]  # all but the last: the heap's top stays in use, so glibc trims nothing by itself
    held = memory.rss_mb()
    memory.release_freed_memory()
    seen["released_mb"] = held - memory.rss_mb()
seen["after"] = mmaps_large_blocks()
time_models([torch.nn.Conv2d(3, 8, 3)], [(3, 8, 8)], batch=2, rounds=1)
seen["after_timing"] = mmaps_large_blocks()
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def glibc_probe() -> dict[str, object]:
    """What GLIBC_PROBE saw in a fresh interpreter (skips where the process does not run on glibc)."""
    out = subprocess.run([sys.executable, "-c", GLIBC_PROBE], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env=search_env())  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    if seen is None:
        pytest.skip("not glibc")
    return dict(seen)


def test_timing_raises_the_thresholds_only_while_it_times(glibc_probe: dict[str, object]) -> None:
    """After a timing, a large buffer is mapped again (given back on free) instead of staying on the heap."""
    assert glibc_probe["start"] is True and glibc_probe["applied"] is True
    assert glibc_probe["inside"] is False
    assert glibc_probe["after"] is True and glibc_probe["after_timing"] is True


def test_release_gives_freed_heap_memory_back(glibc_probe: dict[str, object]) -> None:
    released = glibc_probe["released_mb"]
    assert isinstance(released, float) and released >= 200, released


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
