"""Latency on the runtime and device the model will be deployed with (`objectives.latency_runtime` and
`objectives.latency_device`).

- `eager`: PyTorch as trained (eval mode, no grad, channels-last; bf16 autocast on a GPU, fp32 on a CPU).
- `compiled`: the same module through `torch.compile` (compiled once, in the first warm-up call).
- `onnxruntime`: the model exported to ONNX (torch.export-based exporter, as `precrop export`) and run by an
  ONNX Runtime CPU session with as many intra-op threads as torch uses: what most CPU deployments run.

Device `cpu` times on the CPU of whichever process measures (a trial, then the driver at the end);
`trial` on the trial's own training device, so a GPU worker times with CUDA events. A GPU-timed value is
not re-timed by the driver (which may have no GPU): the trial's value stands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Call = Callable[[], None]


def prepared_call(
    model: torch.nn.Module, input_shape: tuple[int, int, int], batch: int, runtime: str, device: torch.device
) -> Call:
    """One inference of a batch of `batch` random images on `runtime` and `device`, ready to time (the model
    is copied; building the call does the export or the compile's setup, not the timing)."""
    import torch

    from trainers.measure import inference_call, timing_copy

    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("onnxruntime latency is timed on the CPU (its CPU execution provider)")
        return _onnxruntime_call(model, input_shape, batch)
    net: Callable[[torch.Tensor], object] = timing_copy(model, device).eval()
    if runtime == "compiled":
        net = torch.compile(net, dynamic=False)
    x = torch.randn(batch, *input_shape, device=device).contiguous(memory_format=torch.channels_last)
    return inference_call(net, x)


def _onnxruntime_call(model: torch.nn.Module, input_shape: tuple[int, int, int], batch: int) -> Call:
    """An ONNX Runtime CPU session of the exported model, with torch's intra-op thread count."""
    import copy

    import numpy as np
    import onnxruntime as ort
    import torch

    from search.results.export import export_model

    blob = export_model(copy.deepcopy(model).cpu().eval(), input_shape, "onnx", {})
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *input_shape), dtype=np.float32)

    def call() -> None:
        session.run(None, {name: x})

    return call


def latency_device(setting: str, training_device: str = "auto") -> torch.device:
    """The device latency is timed on: the CPU, or (`trial`) the device a trial trains on."""
    import torch

    from trainers.optim import resolve_device

    return torch.device("cpu") if setting == "cpu" else resolve_device(training_device)


def describe(runtime: str, device: torch.device) -> str:
    """'onnxruntime on cpu', 'eager on cuda:0': what a run records about its latency."""
    return f"{runtime} on {device}"
