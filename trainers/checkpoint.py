"""A run directory: plan.json + model.pt (state_dict) + metrics.json, and train_state.pt to resume.

A saved model is always "plan JSON + state_dict": `load_model` rebuilds the architecture from the plan
and loads the weights, so no pickled module is ever needed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from precrop.errors import UserError
from precrop.fileio import write_atomically
from precrop.nn.build import build_from_plan
from precrop.width.plan import PlanError, WidthPlan

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.pt"
METRICS_FILE = "metrics.json"
STATE_FILE = "train_state.pt"


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


def save_model(directory: Path, plan: WidthPlan, model: nn.Module) -> None:
    """Write plan.json and model.pt (the state_dict on the CPU)."""
    save_weights(directory, plan, model.state_dict())


def save_weights(directory: Path, plan: WidthPlan, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write plan.json and model.pt from a state_dict (copied to the CPU)."""
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    write_atomically(directory / PLAN_FILE, plan.to_json(indent=2) + "\n")
    write_atomically(directory / WEIGHTS_FILE, _torch_bytes(state))


def save_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    """Write metrics.json."""
    write_atomically(directory / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


def read_plan(path: str | Path) -> WidthPlan:
    """Parse a plan file; a missing or malformed file is a PlanError naming it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror}") from exc
    return WidthPlan.from_json(text)


def load_model(directory: str | Path) -> tuple[WidthPlan, nn.Module]:
    """Rebuild the model saved in `directory` from its plan and load its weights (eval mode)."""
    root = Path(directory)
    plan = read_plan(root / PLAN_FILE)
    if not (root / WEIGHTS_FILE).is_file():
        raise UserError(f"{root} has no {WEIGHTS_FILE}")
    model = build_from_plan(plan)
    model.load_state_dict(torch.load(root / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return plan, model.eval()
