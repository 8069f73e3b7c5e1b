"""`precrop export`: a run's model -> ONNX, torch.export (.pt2) or TorchScript, checked against PyTorch.

What is exported is the deployable model: the run's normalization (its preprocess.json, see
trainers/checkpoint.py) followed by the trained network, so it takes float32 NCHW RGB images in [0, 1]
and returns logits. A run logged before preprocess.json existed is exported without the normalization:
its graph expects already-normalized input, and its metadata says so. Every export carries the same
`precrop.*` metadata (METADATA_KEYS): ONNX in `metadata_props`, pt2 and TorchScript as the extra file
`precrop.json`, and a registered MLflow model in its MLmodel `metadata` (search/record/models.py registers).
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from precrop.errors import UserError
from precrop.fileio import write_atomically
from precrop.width.plan import WidthPlan
from search.record.models import INPUT_NAME, OUTPUT_NAME, TOLERANCE, RunModel, Servable, load_run_bundle, parse_run_ref
from trainers.checkpoint import COLOR, LAYOUT, VALUE_RANGE, Preprocess

if TYPE_CHECKING:
    from mlflow import MlflowClient

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
MAX_BATCH = 4096  # the dynamic batch axis of the ONNX and pt2 graphs: 1 .. MAX_BATCH
EXTRA_FILE = "precrop.json"  # the metadata inside a pt2 or TorchScript archive
# the metadata every export carries; each value is a string (JSON text except for version, run id, format)
METADATA_KEYS = (
    "precrop.version", "precrop.run_id", "precrop.format", "precrop.width_plan", "precrop.classes",
    "precrop.preprocessing", "precrop.input", "precrop.output",
)  # fmt: skip
NOT_NORMALIZED = (
    "no preprocess.json (logged before precrop-search recorded preprocessing): the exported graph expects "
    "already-normalized input, (image - mean) / std with the training data's statistics"
)


class Normalize(nn.Module):
    """(x - mean) / std per channel, on float NCHW images in [0, 1]: what the training loop did."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize a batch."""
        return (x - self.mean) / self.std


def deployable(model: nn.Module, preprocess: Preprocess | None) -> nn.Module:
    """The model a deployment runs: normalization then `model` (eval, CPU); `model` alone without preprocessing."""
    model = model.eval().cpu()
    if preprocess is None:
        return model
    return nn.Sequential(Normalize(preprocess.mean, preprocess.std), model).eval()


def package_version() -> str:
    """The installed precrop-search version (the source tree's when it is not installed)."""
    try:
        return package_metadata.version("precrop-search")
    except package_metadata.PackageNotFoundError:
        import precrop

        return precrop.__version__


def input_spec(plan: WidthPlan, preprocess: Preprocess | None) -> dict[str, object]:
    """What the exported graph takes (the `precrop.input` metadata)."""
    spec: dict[str, object] = {
        "name": INPUT_NAME, "dtype": "float32", "shape": [-1, *plan.input_shape], "layout": LAYOUT,
        "color": COLOR, "max_batch": MAX_BATCH,
    }  # fmt: skip
    if preprocess is None:
        return {**spec, "value_range": None, "normalized_in_graph": False, "note": NOT_NORMALIZED}
    return {**spec, "value_range": list(VALUE_RANGE), "normalized_in_graph": True, "resize": preprocess.resize}


def export_metadata(plan: WidthPlan, preprocess: Preprocess | None, run_id: str, fmt: str) -> dict[str, str]:
    """The `precrop.*` metadata of an export (METADATA_KEYS), every value a string."""
    classes = list(preprocess.classes) if preprocess is not None else None
    output = {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, plan.num_classes], "meaning": "logits"}
    return {
        "precrop.version": package_version(),
        "precrop.run_id": run_id,
        "precrop.format": fmt,
        "precrop.width_plan": plan.to_json(),
        "precrop.classes": json.dumps(classes),
        "precrop.preprocessing": preprocess.to_json() if preprocess is not None else "null",
        "precrop.input": json.dumps(input_spec(plan, preprocess)),
        "precrop.output": json.dumps(output),
    }


@dataclass(frozen=True)
class ExportCheck:
    """How closely the exported model matches PyTorch on random inputs."""

    max_abs_diff: float
    batch_sizes: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """Within the tolerance."""
        return self.max_abs_diff <= TOLERANCE


def export_model(module: nn.Module, input_shape: tuple[int, ...], fmt: str, meta: Mapping[str, str]) -> bytes:
    """Serialize an eval-mode CPU module: ONNX and pt2 with a dynamic batch axis, TorchScript traced."""
    module = module.eval().cpu()
    example = torch.rand(2, *input_shape)  # a batch of 1 would be specialized into a fixed batch size
    if fmt == "onnx":
        return _onnx_bytes(module, example, meta)
    if fmt == "pt2":
        program = torch.export.export(module, (example,), dynamic_shapes=({0: _batch_dim()},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={EXTRA_FILE: json.dumps(dict(meta))})
        return buffer.getvalue()
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(module, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: json.dumps(dict(meta))})
        return buffer.getvalue()
    raise UserError(f"unknown export format {fmt[:80]!r}; choose from {', '.join(FORMATS)}")


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def _onnx_bytes(module: nn.Module, example: torch.Tensor, meta: Mapping[str, str]) -> bytes:
    """The torch.export-based ONNX exporter's model, with `meta` as its metadata_props."""
    import onnx

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module, (example,), str(path), dynamo=True, external_data=False, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: _batch_dim()},),
        )  # fmt: skip
        proto = onnx.load_model(str(path))
    onnx.helper.set_model_props(proto, dict(meta))
    proto.doc_string = "precrop-search export: float32 NCHW RGB images -> logits; see metadata_props precrop.*"
    return bytes(proto.SerializeToString())


def check_export(
    module: nn.Module, input_shape: tuple[int, ...], fmt: str, blob: bytes, raw_images: bool = True, seed: int = 0
) -> ExportCheck:
    """Run the export (onnxruntime for ONNX, torch.export.load for pt2, torch.jit for TorchScript) against
    PyTorch on random batches: images in [0, 1] when `raw_images`, else standard-normal (normalized) input."""
    generator = torch.Generator().manual_seed(seed)
    runners = {"onnx": _onnx_runner, "pt2": _pt2_runner, "torchscript": _torchscript_runner}
    run = runners[fmt](blob)
    module = module.eval().cpu()
    worst = 0.0
    sizes = (1, 3, 8)
    for size in sizes:
        shape = (size, *input_shape)
        x = torch.rand(shape, generator=generator) if raw_images else torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = module(x).numpy()
        worst = max(worst, float(np.abs(run(x.numpy()) - expected).max()))
    return ExportCheck(worst, sizes)


def _onnx_runner(blob: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _pt2_runner(blob: bytes) -> Callable[[np.ndarray], np.ndarray]:
    # loads only the archive export_model has just written (see docs/security.md)
    module = torch.export.load(io.BytesIO(blob)).module()
    return _torch_runner(module)


def _torchscript_runner(blob: bytes) -> Callable[[np.ndarray], np.ndarray]:
    module = torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()
    return _torch_runner(module)


def _torch_runner(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


@dataclass(frozen=True)
class ExportedFile:
    """A run's model written to a file, how closely it matches PyTorch, and what `--register` logs."""

    path: Path
    size_bytes: int
    check: ExportCheck
    servable: Servable

    @property
    def normalized_in_graph(self) -> bool:
        """Whether the graph normalizes its input itself (False for runs without preprocess.json)."""
        return json.loads(self.servable.metadata["precrop.input"])["normalized_in_graph"] is True


def export_run(client: MlflowClient, run: str, fmt: str, output: str | None) -> ExportedFile:
    """Export the final model of `run` (RUN_ID, runs:/RUN_ID or runs:/RUN_ID/model), normalization
    included, to `output` (default RUNID-ARCH.onnx|.pt2|.pt), checked against PyTorch."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt[:80]!r}; choose from {', '.join(FORMATS)}")
    run_id = parse_run_ref(run)
    loaded = load_run_bundle(client, run_id)
    path = Path(output or f"{run_id[:12]}-{loaded.plan.arch}{FORMATS[fmt]}")
    if path.parent and not path.parent.is_dir():
        raise UserError(f"output directory {path.parent} does not exist")
    servable = servable_of(loaded, run_id, fmt)
    check = check_export(servable.module, servable.input_shape, fmt, servable.blob, loaded.preprocess is not None)
    if not check.ok:
        raise UserError(f"the {fmt} export differs from PyTorch by {check.max_abs_diff:.2e} (> {TOLERANCE})")
    write_atomically(path, servable.blob)
    return ExportedFile(path, len(servable.blob), check, servable)


def servable_of(loaded: RunModel, run_id: str, fmt: str) -> Servable:
    """A run's deployable model exported to `fmt`, with its metadata."""
    plan = loaded.plan
    module = deployable(loaded.model, loaded.preprocess)
    meta = export_metadata(plan, loaded.preprocess, run_id, fmt)
    blob = export_model(module, plan.input_shape, fmt, meta)
    return Servable(fmt, blob, module, plan.input_shape, plan.num_classes, meta)


def missing_preprocess_note(run_id: str) -> str:
    """The one stderr line for a run without preprocess.json."""
    return f"precrop: warning: run {run_id[:40]} has {NOT_NORMALIZED}"
