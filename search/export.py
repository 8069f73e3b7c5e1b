"""`precrop export`: a run's model -> ONNX or TorchScript, checked against PyTorch, optionally registered."""

from __future__ import annotations

import argparse
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from precrop.errors import UserError
from precrop.fileio import write_atomically
from precrop.width.plan import WidthPlan
from search.config import default_tracking_uri

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


def _onnx_runner(blob: bytes) -> Any:
    import onnxruntime

    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _torchscript_runner(blob: bytes) -> Any:
    module = torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def run_export(args: argparse.Namespace) -> int:
    """The `precrop export` command."""
    from search import tracking
    from search.models import load_run_model

    uri = tracking.resolve_tracking_uri(args.tracking_uri or default_tracking_uri())
    client = tracking.client_for(uri)
    plan, model = load_run_model(client, args.run_id)
    output = Path(args.output or f"{args.run_id[:12]}-{plan.arch}{FORMATS[args.format]}")
    if output.parent and not output.parent.is_dir():
        raise UserError(f"output directory {output.parent} does not exist")
    blob = export_model(model, plan, args.format)
    check = check_export(model, plan, args.format, blob)
    if not check.ok:
        raise UserError(f"the {args.format} export differs from PyTorch by {check.max_abs_diff:.2e} (> {TOLERANCE})")
    write_atomically(output, blob)
    print(f"wrote {output} ({len(blob) / 1e6:.2f} MB); max |export - pytorch| = {check.max_abs_diff:.2e} "
          f"on random batches of {', '.join(map(str, check.batch_sizes))}")  # fmt: skip
    if args.register:
        version = register(client, args.run_id, output, args.format, args.register, args.alias)
        print(f"registered {args.register} version {version} (alias @{args.alias}) in {uri}")
    return 0


def register(client: Any, run_id: str, exported: Path, fmt: str, name: str, alias: str) -> str:
    """Log the exported file to the run under `export/FORMAT` and register it as a new model version."""
    artifact_path = f"export/{fmt}"
    client.log_artifact(run_id, str(exported), artifact_path=artifact_path)
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{artifact_path}"
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description="exported by precrop-search")
    version = client.create_model_version(name, source=source, run_id=run_id, tags={"format": fmt})
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)
