"""Process memory: give freed heap memory back to the OS, and read this process's resident size.

Why a long-lived trial process grew by gigabytes (measured, MobileNetV2 on CIFAR-sized images, one process
training one plan after another): nothing leaked. glibc's malloc keeps memory that torch frees in its heaps,
and every plan has other tensor shapes, so the next trial's buffers rarely fit the holes the last one left:
resident size went 0.86 -> 1.3 -> 2.0 -> 2.7 GB over three trials and dropped back to 0.86-0.89 GB after
`malloc_trim(0)`. Latency timing made it far worse: it raised glibc's mmap and trim thresholds to 1 GiB for
the rest of the process (so that timings do not page-fault), which put even the largest activation buffers
on the heap for good (3.1 GB after the first trial).

So timing keeps freed memory only while it times (`freed_memory_kept`), and a process that is reused for
another trial calls `release_freed_memory` between trials. PyTorch's CPU allocator has no cache to empty
(unlike `torch.cuda.empty_cache`), and Python cannot reach glibc's tuning otherwise: hence ctypes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

# glibc's mallopt parameters (malloc.h) and the values it starts with; a threshold set through mallopt stays
# fixed (glibc no longer adapts it), so leaving the timing restores the level glibc's adaptive threshold
# reaches in a process that frees large buffers: its ceiling (32 MiB on 64-bit) with twice that for trimming
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_THRESHOLD = 1 << 30
ADAPTIVE_MMAP_CEILING = 32 << 20


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, where this process runs on it (None on macOS, Windows or musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (musl's libc.so.6 shim has no malloc_trim)
    except (OSError, AttributeError):
        return None
    return libc


def _set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Inside: glibc keeps freed buffers up to 1 GiB instead of unmapping them (repeatable CPU timings);
    on leaving, the thresholds come down and what was kept is released. Yields whether it applied."""
    applied = _set_thresholds(KEEP_THRESHOLD, KEEP_THRESHOLD)
    try:
        yield applied
    finally:
        if applied:
            _set_thresholds(ADAPTIVE_MMAP_CEILING, 2 * ADAPTIVE_MMAP_CEILING)
            release_freed_memory()


def release_freed_memory() -> bool:
    """Collect garbage, then hand every free heap page back to the OS (glibc's malloc_trim); False without glibc."""
    gc.collect()
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


@functools.cache
def freeze_startup_objects() -> None:
    """Once per process: move every object alive now (the imported modules and their tables, about 430,000
    objects in a trial process) out of the garbage collector's reach, so each later `gc.collect()` scans
    only what trials made: 0.2 CPU-s a collection before, a few milliseconds after (measured in a process
    with torch, MLflow, Ray Tune and cvxpy imported). Call it before anything that is freed later exists:
    a frozen object is never collected (Python's `gc.freeze`; freeing by reference count still works)."""
    gc.collect()
    gc.freeze()
    atexit.register(gc.unfreeze)  # at exit, collect them again: native bindings (triton's) warn of leaks otherwise


def rss_mb() -> float | None:
    """This process's resident set size now, in MiB (None where /proc is absent)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """The largest resident set size since the process started or since `reset_peak_rss`, in MiB."""
    return _status_mb("VmHWM")


def reset_peak_rss() -> bool:
    """Start measuring the peak afresh (Linux: writing 5 to /proc/self/clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_mb(field: str) -> float | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return None
