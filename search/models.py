"""Models saved in MLflow runs, and the Model Registry.

A trial's `model/` artifact folder holds plan.json + model.pt (a state_dict); its `plan/` folder holds
the plan alone (logged when the trial starts, so every run has one). `precrop export --register` logs
the exported file under `export/<format>` and registers it as a new model version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from torch import nn

from precrop.errors import UserError
from precrop.width.plan import WidthPlan
from search.schema import MODEL_VERSION_FORMAT_TAG, Artifact
from trainers.checkpoint import PLAN_FILE, WEIGHTS_FILE, load_model


def load_run_model(client: MlflowClient, run_id: str) -> tuple[WidthPlan, nn.Module]:
    """Rebuild a run's final model from its plan and weights (eval mode, CPU)."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise UserError(f"no MLflow run {run_id!r} at {client.tracking_uri}") from exc
    names = {f.path for f in client.list_artifacts(run.info.run_id, Artifact.MODEL_DIR)}
    needed = {f"{Artifact.MODEL_DIR}/{PLAN_FILE}", f"{Artifact.MODEL_DIR}/{WEIGHTS_FILE}"}
    if not needed <= names:
        raise UserError(f"run {run_id} has no final weights (it did not train to the end)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = client.download_artifacts(run.info.run_id, Artifact.MODEL_DIR, tmp)
        return load_model(Path(folder))


def load_run_plan(client: MlflowClient, run_id: str) -> WidthPlan | None:
    """The plan a run logged (`plan/plan.json`, else `model/plan.json`); None when it has none."""
    for folder in (Artifact.PLAN_DIR, Artifact.MODEL_DIR):
        if not any(f.path == f"{folder}/{PLAN_FILE}" for f in client.list_artifacts(run_id, folder)):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, f"{folder}/{PLAN_FILE}", tmp)
            return WidthPlan.from_json(Path(path).read_text())
    return None


def run_plan(run: Run, client: MlflowClient | None = None) -> WidthPlan | None:
    """The plan the run logged (through `client`, else its artifact URI); None when it cannot be read."""
    from mlflow.exceptions import MlflowException

    try:
        if client is not None:
            return load_run_plan(client, run.info.run_id)
        return plan_at(str(run.info.artifact_uri))
    except (MlflowException, OSError, UserError, ValueError, KeyError):
        return None


def plan_at(artifact_uri: str) -> WidthPlan | None:
    """`plan/plan.json`, else `model/plan.json`, under a run's artifact URI (no client needed)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    for folder in (Artifact.PLAN_DIR, Artifact.MODEL_DIR):
        uri = f"{artifact_uri}/{folder}/{PLAN_FILE}"
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            except (MlflowException, OSError):
                continue
            return WidthPlan.from_json(Path(path).read_text())
    return None


def register(client: MlflowClient, run_id: str, exported: Path, fmt: str, name: str, alias: str) -> str:
    """Log the exported file to the run under `export/FORMAT` and register it as a new model version."""
    artifact_path = f"{Artifact.EXPORT_DIR}/{fmt}"
    client.log_artifact(run_id, str(exported), artifact_path=artifact_path)
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{artifact_path}"
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description="exported by precrop-search")
    version = client.create_model_version(name, source=source, run_id=run_id, tags={MODEL_VERSION_FORMAT_TAG: fmt})
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)
