"""Honest cost numbers: counted params and MACs, and measured latency and training-step time.

Timings are medians over repeats after warm-up runs, with CUDA synchronized around each repeat. CUDA
timings use bf16 autocast; CPU timings use fp32 and the current torch thread count; both use
channels-last, as the loop does. Each measurement stops repeating after `max_seconds`, keeping at least 3 repeats.

CPU timings run inside `trainers.memory.freed_memory_kept()`. Without it glibc hands activation buffers larger
than its mmap threshold back to the OS after every call and page-faults them in again on the next one: we
saw the same CIFAR ResNet-56 take 190 ms per batch of 64 in one process and 127 ms in another, depending
only on the allocator's history. Raising the thresholds makes timings repeatable and closer to a
long-running server with a caching allocator; they come down again when the timing ends, because a
process that kept them trained every later model with its buffers stuck on the heap (trainers/memory.py).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from precrop.nn.counting import count_cost
from trainers.loop import autocast_context
from trainers.memory import freed_memory_kept


@dataclass(frozen=True)
class Timing:
    """Median wall time of one call, in milliseconds, and how many repeats it is the median of."""

    median_ms: float
    repeats: int


def _time_calls(
    fn: Callable[[], None], sync: Callable[[], None], warmup: int, repeats: int, max_seconds: float
) -> Timing:
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return Timing(statistics.median(times), len(times))


def time_call(
    fn: Callable[[], None], device: torch.device, warmup: int = 3, repeats: int = 20, max_seconds: float = 5.0
) -> Timing:
    """Median milliseconds of `fn()` (at least 3 calls, `repeats` within `max_seconds`): timed by CUDA events on
    a GPU (the GPU's own clock, from the first kernel queued to the last one done), by the host clock elsewhere."""
    if device.type != "cuda":
        return _time_calls(fn, lambda: None, warmup, repeats, max_seconds)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return Timing(statistics.median(times), len(times))


def timing_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A channels-last copy of `model` on `device` to time (time it inside `freed_memory_kept()` on the CPU)."""
    return copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 5.0,
) -> Timing:
    """Median inference time of a batch (eval mode, no grad) on a copy of `model`."""
    device = torch.device(device)

    def timed() -> Timing:  # its copy and input are freed when it returns, before the memory is released
        net = timing_copy(model, device).eval()
        return time_inference(net, torch.randn(batch_size, *input_shape, device=device), warmup, repeats, max_seconds)

    with freed_memory_kept():
        return timed()


def time_inference(
    net: nn.Module, x: torch.Tensor, warmup: int = 3, repeats: int = 20, max_seconds: float = 5.0
) -> Timing:
    """Median time of `net(x)` (no grad; bf16 autocast on CUDA), `net` prepared by `timing_copy` and in eval mode."""
    return _time_calls(inference_call(net, x), _sync_for(x.device), warmup, repeats, max_seconds)


def inference_call(net: Callable[[torch.Tensor], object], x: torch.Tensor) -> Callable[[], None]:
    """One timed inference: `net(x)` without gradients, under bf16 autocast on CUDA (fp32 elsewhere)."""

    @torch.no_grad()
    def call() -> None:
        with autocast_context(x.device, amp=True):
            net(x)

    return call


def measure_train_step(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int,
    num_classes: int,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    repeats: int = 10,
    max_seconds: float = 10.0,
) -> Timing:
    """Median time of forward + backward + SGD step on a copy of `model` (train mode)."""
    device = torch.device(device)

    def timed() -> Timing:  # its copy, optimizer and batch are freed when it returns, before the release
        net = timing_copy(model, device).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        x = torch.randn(batch_size, *input_shape, device=device)
        y = torch.randint(0, num_classes, (batch_size,), device=device)

        def step() -> None:
            with autocast_context(device, amp=True):
                loss = F.cross_entropy(net(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return _time_calls(step, _sync_for(device), warmup, repeats, max_seconds)

    with freed_memory_kept():
        return timed()


def measure_model(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_sizes: tuple[int, ...] = (1, 64),
    devices: tuple[str, ...] | None = None,
    max_seconds: float = 5.0,
) -> dict[str, float]:
    """Counted params and MACs plus median latency per device and batch size (`latency_cpu_b1_ms`, ...).

    `devices` defaults to the CPU, and CUDA too when present.
    """
    if devices is None:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    cost = count_cost(copy.deepcopy(model).cpu(), input_shape)
    result: dict[str, float] = {"params": float(cost.params), "macs": float(cost.macs)}
    for device in devices:
        for batch in batch_sizes:
            timing = measure_latency(model, input_shape, batch, device, max_seconds=max_seconds)
            result[f"latency_{torch.device(device).type}_b{batch}_ms"] = timing.median_ms
    return result
