"""Where a search keeps its records: the MLflow tracking URI and Tune's storage path, config then environment."""

from __future__ import annotations

import os

from search.spec.config import DEFAULT_TRACKING_URI, STORAGE_ENV, ExperimentConfig
from search.spec.validate import check_tracking_uri


def tracking_uri_of(config: ExperimentConfig) -> str:
    """The tracking URI a search uses: the config's, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    if config.mlflow.tracking_uri is not None:
        return config.mlflow.tracking_uri
    return default_tracking_uri()


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set (checked), else sqlite:///mlflow.db in the working directory."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if from_env:
        check_tracking_uri(from_env, "MLFLOW_TRACKING_URI")
        return from_env
    return DEFAULT_TRACKING_URI


def storage_path_of(config: ExperimentConfig) -> str:
    """Where Tune keeps a search: the config's storage_path, else $PRECROP_STORAGE_PATH, else ./ray_results."""
    if config.ray.storage_path is not None:
        return config.ray.storage_path
    return os.environ.get(STORAGE_ENV, "").strip() or "ray_results"
