"""Models saved in MLflow runs: the `model/` artifact folder holds plan.json + model.pt (a state_dict)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from precrop.errors import UserError
from precrop.width.plan import WidthPlan
from trainers.checkpoint import PLAN_FILE, WEIGHTS_FILE, load_model

MODEL_ARTIFACTS = "model"
PLAN_ARTIFACTS = "plan"


def load_run_model(client: Any, run_id: str) -> tuple[WidthPlan, nn.Module]:
    """Rebuild a run's final model from its plan and weights (eval mode, CPU)."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise UserError(f"no MLflow run {run_id!r} at {client.tracking_uri}") from exc
    names = {f.path for f in client.list_artifacts(run.info.run_id, MODEL_ARTIFACTS)}
    needed = {f"{MODEL_ARTIFACTS}/{PLAN_FILE}", f"{MODEL_ARTIFACTS}/{WEIGHTS_FILE}"}
    if not needed <= names:
        raise UserError(f"run {run_id} has no final weights (it did not train to the end)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = client.download_artifacts(run.info.run_id, MODEL_ARTIFACTS, tmp)
        return load_model(Path(folder))


def load_run_plan(client: Any, run_id: str) -> WidthPlan | None:
    """The plan a run logged (`plan/plan.json`, else `model/plan.json`); None when it has none."""
    for folder in (PLAN_ARTIFACTS, MODEL_ARTIFACTS):
        if not any(f.path == f"{folder}/{PLAN_FILE}" for f in client.list_artifacts(run_id, folder)):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, f"{folder}/{PLAN_FILE}", tmp)
            return WidthPlan.from_json(Path(path).read_text())
    return None
