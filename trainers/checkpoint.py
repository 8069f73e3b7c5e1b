"""A run directory: plan.json + model.pt (state_dict) + preprocess.json + metrics.json, and train_state.pt.

A saved model is always "plan JSON + state_dict": `load_model` rebuilds the architecture from the plan
and loads the weights, so no pickled module is ever needed. Beside them, preprocess.json (`Preprocess`)
records how the model's inputs were made from images (mean, std, class names, input shape), so the model
can be used, and exported with its normalization (search/results/export.py), without the training code or data.
Models saved before preprocess.json existed have none: `read_preprocess` then returns None.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the run folder's file names are precrop.api's (re-exported for the trainers and search)
from precrop.api import PLAN_FILE as PLAN_FILE
from precrop.api import WEIGHTS_FILE as WEIGHTS_FILE
from precrop.api import load as load_folder
from precrop.api import write_weights
from precrop.errors import UserError
from precrop.fileio import write_atomically
from precrop.width.plan import WidthPlan, read_plan_file
from trainers.batches import EVAL_CROP_FRACTION
from trainers.datasets import DataSet

PREPROCESS_FILE = "preprocess.json"
METRICS_FILE = "metrics.json"
STATE_FILE = "train_state.pt"

PREPROCESS_SCHEMA_VERSION = 1
# what every saved model takes before normalization (the only values schema version 1 knows)
LAYOUT = "NCHW"
COLOR = "RGB"
VALUE_RANGE = (0.0, 1.0)
MAX_PREPROCESS_BYTES = 8 << 20  # ImageNet's 1000 class names take about 30 KB
MAX_CLASS_NAME = 1000
_SHOWN = 80  # characters of a file's value echoed into an error


class PreprocessError(UserError):
    """A preprocess.json that cannot be used: not JSON, a missing or bad field, another schema version."""


@dataclass(frozen=True)
class Preprocess:
    """How a saved model's input is made from an image, and what its outputs mean.

    An image of `input_shape` (C, H, W), RGB, float32 in [0, 1] (uint8 / 255), NCHW, goes through
    (x - mean) / std per channel before the model; `mean` and `std` are in [0, 1] units. `resize` is set
    for data read from files: evaluation resized the shorter side to `resize` pixels, then center-cropped
    to H x W (resident data was used at its stored size). Output k is the logit of `classes[k]`.
    """

    dataset: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    schema_version: int = PREPROCESS_SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.validate()
        for key in ("mean", "std"):  # JSON may hold 1 for 1.0: compare and serialize as floats
            object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    @classmethod
    def from_dataset(cls, data: DataSet) -> Preprocess:
        """What the training loop did to `data`'s images (trainers/augment.py's Normalizer)."""
        height = data.image_shape[1]
        resize = None if data.resident else round(height / EVAL_CROP_FRACTION)
        return cls(data.name, tuple(data.classes), data.image_shape, tuple(data.mean), tuple(data.std), resize)

    def validate(self) -> None:
        """PreprocessError naming the first field that is out of range."""
        _check(isinstance(self.dataset, str) and 0 < len(self.dataset) <= MAX_CLASS_NAME, "dataset", self.dataset)
        _check(len(self.input_shape) == 3 and all(_positive_int(v) for v in self.input_shape), "input_shape",
               self.input_shape)  # fmt: skip
        channels = self.input_shape[0]
        _check(self.classes and all(_name(c) for c in self.classes), "classes", self.classes)
        _check(len(self.mean) == channels and all(_finite(v) for v in self.mean), "mean", self.mean)
        _check(len(self.std) == channels and all(_finite(v) and v > 0 for v in self.std), "std", self.std)
        _check(self.resize is None or _positive_int(self.resize), "resize", self.resize)

    def check_plan(self, plan: WidthPlan) -> None:
        """PreprocessError when the plan's model takes another input shape or has another number of classes."""
        if tuple(plan.input_shape) != self.input_shape or plan.num_classes != len(self.classes):
            shape = "x".join(map(str, self.input_shape))
            raise PreprocessError(
                f"{PREPROCESS_FILE} is for {shape} inputs and {len(self.classes)} classes, but the plan's model "
                f"takes {'x'.join(map(str, plan.input_shape))} and has {plan.num_classes}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (layout, color and value range written out for readers of the file)."""
        return {
            "schema_version": self.schema_version, "dataset": self.dataset, "classes": list(self.classes),
            "input_shape": list(self.input_shape), "layout": LAYOUT, "color": COLOR,
            "value_range": list(VALUE_RANGE), "mean": list(self.mean), "std": list(self.std),
            "resize": self.resize,
        }  # fmt: skip

    def to_json(self, indent: int | None = None) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        """Parse and validate JSON text; anything malformed is one PreprocessError line."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise PreprocessError(f"{PREPROCESS_FILE} is not valid JSON: {str(exc)[:_SHOWN]}") from None
        if not isinstance(data, dict):
            raise PreprocessError(f"{PREPROCESS_FILE} must hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """Build from a parsed preprocess.json (every key checked, unknown keys refused)."""
        version = data.get("schema_version")
        if version != PREPROCESS_SCHEMA_VERSION:
            raise PreprocessError(f"{PREPROCESS_FILE} has schema_version {_shown(version)}; this precrop-search "
                                  f"reads {PREPROCESS_SCHEMA_VERSION}")  # fmt: skip
        known = {"schema_version", "dataset", "classes", "input_shape", "layout", "color", "value_range", "mean",
                 "std", "resize"}  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise PreprocessError(f"{PREPROCESS_FILE} has unknown key {_shown(unknown[0])}")
        for key, fixed in (("layout", LAYOUT), ("color", COLOR), ("value_range", list(VALUE_RANGE))):
            _check(data.get(key, fixed) == fixed, key, data.get(key))
        missing = [k for k in ("dataset", "classes", "input_shape", "mean", "std") if k not in data]
        if missing:
            raise PreprocessError(f"{PREPROCESS_FILE} has no {missing[0]!r}")
        return cls(
            dataset=data["dataset"], classes=_tuple(data["classes"], "classes"),
            input_shape=_tuple(data["input_shape"], "input_shape"),
            mean=_tuple(data["mean"], "mean"), std=_tuple(data["std"], "std"), resize=data.get("resize"),
        )  # fmt: skip


def _tuple(value: Any, key: str) -> tuple[Any, ...]:
    _check(isinstance(value, list), key, value)
    return tuple(value)


def _check(ok: Any, key: str, value: Any) -> None:
    if not ok:
        raise PreprocessError(f"{PREPROCESS_FILE} has a bad {key!r}: {_shown(value)}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_CLASS_NAME


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_train_state(directory: Path, state: dict[str, Any]) -> None:
    """Write the loop's resume state (atomically, replacing the previous epoch's)."""
    write_atomically(directory / STATE_FILE, _torch_bytes(state))


def load_train_state(directory: Path) -> dict[str, Any] | None:
    """The saved resume state, or None when the directory has none."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def save_model(directory: Path, plan: WidthPlan, model: nn.Module, preprocess: Preprocess | None = None) -> None:
    """Write plan.json and model.pt (the state_dict on the CPU), and preprocess.json when given."""
    save_weights(directory, plan, model.state_dict(), preprocess)


def save_weights(
    directory: Path, plan: WidthPlan, state_dict: Mapping[str, torch.Tensor], preprocess: Preprocess | None = None
) -> None:
    """Write plan.json and model.pt from a state_dict (copied to the CPU), and preprocess.json when given."""
    if preprocess is not None:
        preprocess.check_plan(plan)
    write_weights(directory, plan, state_dict)
    if preprocess is not None:
        write_preprocess(directory, preprocess)


def write_preprocess(directory: Path, preprocess: Preprocess) -> None:
    """Write preprocess.json."""
    write_atomically(directory / PREPROCESS_FILE, preprocess.to_json(indent=2) + "\n")


def read_preprocess(directory: str | Path) -> Preprocess | None:
    """The directory's preprocess.json, or None when it has none (a model saved before the file existed).

    A file that is too large, not UTF-8 or malformed is a PreprocessError.
    """
    path = Path(directory) / PREPROCESS_FILE
    if not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_PREPROCESS_BYTES + 1)
    except OSError as exc:
        raise PreprocessError(f"cannot read {PREPROCESS_FILE}: {exc.strerror}") from exc
    if len(raw) > MAX_PREPROCESS_BYTES:
        raise PreprocessError(f"{PREPROCESS_FILE} is larger than {MAX_PREPROCESS_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PreprocessError(f"{PREPROCESS_FILE} is not UTF-8 text (byte {exc.start})") from None
    return Preprocess.from_json(text)


def save_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    """Write metrics.json."""
    write_atomically(directory / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


def read_plan(path: str | Path) -> WidthPlan:
    """Parse a plan file; a missing, non-UTF-8 or malformed file is a PlanError naming it."""
    return read_plan_file(path)


def load_model(directory: str | Path) -> tuple[WidthPlan, nn.Module]:
    """Rebuild the model saved in `directory` from its plan and load its weights (eval mode)."""
    loaded = load_folder(directory)
    return loaded.plan, loaded.model
