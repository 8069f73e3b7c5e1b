"""`precrop export`: a run's model -> ONNX or TorchScript, checked against PyTorch (search/models.py registers it)."""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from precrop.errors import UserError
from precrop.fileio import write_atomically
from precrop.width.plan import WidthPlan
from search.models import load_run_model

if TYPE_CHECKING:
    from mlflow import MlflowClient

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportCheck:
    """How closely the exported model matches PyTorch on random inputs."""

    max_abs_diff: float
    batch_sizes: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """Within the tolerance."""
        return self.max_abs_diff <= TOLERANCE


def export_model(model: nn.Module, plan: WidthPlan, fmt: str) -> bytes:
    """Serialize an eval-mode CPU model to ONNX (dynamic batch) or TorchScript (traced)."""
    model = model.eval().cpu()
    example = torch.randn(2, *plan.input_shape)
    if fmt == "onnx":
        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                input_names=["images"], output_names=["logits"], dynamic_shapes=({0: batch},),
            )  # fmt: skip
            return path.read_bytes()
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        return buffer.getvalue()
    raise UserError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def check_export(model: nn.Module, plan: WidthPlan, fmt: str, blob: bytes, seed: int = 0) -> ExportCheck:
    """Run the export (onnxruntime for ONNX, torch.jit for TorchScript) against PyTorch on random batches."""
    generator = torch.Generator().manual_seed(seed)
    run = _onnx_runner(blob) if fmt == "onnx" else _torchscript_runner(blob)
    worst = 0.0
    sizes = (1, 3, 8)
    for size in sizes:
        x = torch.randn(size, *plan.input_shape, generator=generator)
        with torch.no_grad():
            expected = model.eval().cpu()(x).numpy()
        worst = max(worst, float(np.abs(run(x.numpy()) - expected).max()))
    return ExportCheck(worst, sizes)


def _onnx_runner(blob: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _torchscript_runner(blob: bytes) -> Callable[[np.ndarray], np.ndarray]:
    module = torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


@dataclass(frozen=True)
class ExportedFile:
    """A run's model written to a file, and how closely it matches PyTorch."""

    path: Path
    size_bytes: int
    check: ExportCheck


def export_run(client: MlflowClient, run_id: str, fmt: str, output: str | None) -> ExportedFile:
    """Export run `run_id`'s final model to `output` (default RUNID-ARCH.onnx|.pt), checked against PyTorch."""
    plan, model = load_run_model(client, run_id)
    path = Path(output or f"{run_id[:12]}-{plan.arch}{FORMATS[fmt]}")
    if path.parent and not path.parent.is_dir():
        raise UserError(f"output directory {path.parent} does not exist")
    blob = export_model(model, plan, fmt)
    check = check_export(model, plan, fmt, blob)
    if not check.ok:
        raise UserError(f"the {fmt} export differs from PyTorch by {check.max_abs_diff:.2e} (> {TOLERANCE})")
    write_atomically(path, blob)
    return ExportedFile(path, len(blob), check)
