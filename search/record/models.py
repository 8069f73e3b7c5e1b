"""Models saved in MLflow runs, and the Model Registry.

A trial's `model/` artifact folder holds plan.json + model.pt (a state_dict) + preprocess.json (runs
logged before preprocess.json existed lack it); its `plan/` folder holds the plan alone (logged when the
trial starts, so every run has one). `precrop export --register` logs the export as an MLflow model
(onnx flavor for ONNX, the pytorch flavor's torch.export format for pt2: nothing pickled) linked to the
run, checks it against PyTorch through `mlflow.pyfunc`, and registers it as a new model version.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from torch import nn

from precrop.errors import UserError
from precrop.width.plan import WidthPlan
from search.record.tracking import first_line, redact_uri
from search.spec.limits import shown
from search.spec.schema import EXPORT_MODEL_PREFIX, MODEL_VERSION_FORMAT_TAG, Artifact
from trainers.checkpoint import PLAN_FILE, WEIGHTS_FILE, Preprocess, load_model, read_preprocess

# what `precrop export` accepts for a run: RUN_ID, runs:/RUN_ID or runs:/RUN_ID/model
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
RUNS_SCHEME = "runs:/"
# formats `--register` logs as MLflow models; TorchScript is deprecated upstream and MLflow's pytorch
# flavor would load it through its pickle path, so it is exported to a file only
REGISTRABLE = ("onnx", "pt2")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-4


@dataclass(frozen=True)
class RunModel:
    """A run's final model: its plan, the rebuilt module (eval, CPU) and its preprocess.json (None for
    runs logged before that file existed)."""

    plan: WidthPlan
    model: nn.Module
    preprocess: Preprocess | None


def parse_run_ref(text: str) -> str:
    """The run id in `RUN_ID`, `runs:/RUN_ID` or `runs:/RUN_ID/model`; anything else is a one-line UserError."""
    if not text.startswith(RUNS_SCHEME):
        if ":" in text:  # models:/, s3://, file: ...: a run id never holds a colon
            raise UserError(f"unsupported URI {shown(text)}: give a run as RUN_ID, runs:/RUN_ID or runs:/RUN_ID/model, "
                            "or a registered version as models:/NAME@ALIAS or models:/NAME/VERSION")  # fmt: skip
        return _run_id(text, text)
    run_id, _, path = text[len(RUNS_SCHEME) :].partition("/")
    if path.strip("/") not in ("", Artifact.MODEL_DIR):
        raise UserError(f"unsupported run URI {shown(text)}: a run's model is at runs:/RUN_ID or runs:/RUN_ID/model")
    return _run_id(run_id, text)


def _run_id(run_id: str, given: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise UserError(f"{shown(given)} is not a run id (letters, digits, '-' and '_'), runs:/RUN_ID or "
                        "runs:/RUN_ID/model")  # fmt: skip
    return run_id


def load_run_model(client: MlflowClient, run_id: str) -> tuple[WidthPlan, nn.Module]:
    """Rebuild a run's final model from its plan and weights (eval mode, CPU)."""
    loaded = load_run_bundle(client, run_id)
    return loaded.plan, loaded.model


def load_run_bundle(client: MlflowClient, run_id: str) -> RunModel:
    """A run's final model with its preprocessing (None when the run predates preprocess.json)."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise UserError(f"no MLflow run {shown(run_id)} at {client.tracking_uri}") from exc
    names = {f.path for f in client.list_artifacts(run.info.run_id, Artifact.MODEL_DIR)}
    needed = {f"{Artifact.MODEL_DIR}/{PLAN_FILE}", f"{Artifact.MODEL_DIR}/{WEIGHTS_FILE}"}
    if not needed <= names:
        raise UserError(f"run {run_id} has no final weights (it did not train to the end)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = client.download_artifacts(run.info.run_id, Artifact.MODEL_DIR, tmp)
        plan, model = load_model(Path(folder))
        preprocess = read_preprocess(folder)
    if preprocess is not None:
        preprocess.check_plan(plan)
    return RunModel(plan, model, preprocess)


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


@dataclass(frozen=True)
class Servable:
    """An export to log as an MLflow model: `module` is its eager twin (normalization included, eval,
    CPU), `blob` the exported ONNX bytes (unused for pt2: MLflow's pytorch flavor runs torch.export on
    `module` itself), `metadata` the precrop.* keys (search/results/export.py) written into the MLmodel file."""

    fmt: str
    blob: bytes
    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    metadata: Mapping[str, str]


def check_registrable(fmt: str) -> None:
    """UserError unless `--register` can log format `fmt` as an MLflow model."""
    if fmt not in REGISTRABLE:
        raise UserError(f"--register needs --format onnx or pt2: {shown(fmt)} exports are written to a file only "
                        "(TorchScript is deprecated upstream and MLflow would load it by unpickling)")  # fmt: skip


def register(client: MlflowClient, run_id: str, servable: Servable, name: str, alias: str) -> str:
    """Log `servable` as an MLflow model of run `run_id`, register it as a new version of `name` with
    `alias`; return the version. An error MLflow raises (a bad name or alias) undoes what this call
    created (the logged model, the registered model, the version) and becomes a one-line UserError."""
    check_registrable(servable.fmt)
    undo: list[Callable[[], object]] = []
    try:
        location, model_id = log_servable(client, run_id, servable)
        undo.append(lambda: client.delete_logged_model(model_id))
        if not _registered_model_exists(client, name):
            client.create_registered_model(name, description="exported by precrop-search")
            undo.append(lambda: client.delete_registered_model(name))
        # the logged model's artifact location, not its models:/ URI: a local store resolves that URI
        # through the process-global tracking URI instead of this client's (a TODO in MLflow's registry store)
        version = client.create_model_version(name, source=location, run_id=run_id, model_id=model_id,
                                              tags={MODEL_VERSION_FORMAT_TAG: servable.fmt})  # fmt: skip
        undo.append(lambda: client.delete_model_version(name, version.version))
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        for step in reversed(undo):
            with suppress(MlflowException):
                step()
        raise UserError(f"cannot register {shown(name)} @{shown(alias)}: {redact_uri(first_line(exc))}") from exc
    return str(version.version)


def _registered_model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def log_servable(client: MlflowClient, run_id: str, servable: Servable) -> tuple[str, str]:
    """Save `servable` as an MLflow model, check it through `mlflow.pyfunc` against PyTorch, and log it
    as a LoggedModel of run `run_id`; return its artifact location and model id (`models:/<model id>`).

    These are the public client calls `mlflow.<flavor>.log_model` makes, made with this module's explicit
    client: log_model reads the process-global tracking URI (and the default experiment) instead.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    run = client.get_run(run_id)
    tags = {MODEL_VERSION_FORMAT_TAG: servable.fmt}
    name = f"{EXPORT_MODEL_PREFIX}{servable.fmt}"
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id, tags=tags)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "model"
            info = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                         model_id=logged.model_id)  # fmt: skip
            save_servable(servable, local, info)
            worst = pyfunc_difference(str(local), servable)
            if worst > TOLERANCE:
                raise UserError(f"the MLflow {servable.fmt} model differs from PyTorch by {worst:.2e} (> {TOLERANCE})")
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        with suppress(MlflowException):  # the error that got here says more than a second one
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return str(logged.artifact_location), str(logged.model_id)


def save_servable(servable: Servable, path: Path, mlflow_model: Any = None) -> None:
    """Write `servable` as an MLflow model folder (MLmodel, signature, input example, metadata) at `path`."""
    signature = model_signature(servable)
    metadata = dict(servable.metadata)
    if servable.fmt == "onnx":
        import mlflow.onnx
        import onnx

        mlflow.onnx.save_model(
            onnx.load_model_from_string(servable.blob), str(path), mlflow_model=mlflow_model, signature=signature,
            input_example=input_example(servable.input_shape, 1), metadata=metadata, save_as_external_data=False,
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        )  # fmt: skip
        return
    import mlflow.pytorch

    # a batch of 2: torch.export would specialize a batch of 1 into a fixed batch size
    mlflow.pytorch.save_model(
        servable.module, str(path), mlflow_model=mlflow_model, signature=signature, metadata=metadata,
        input_example=input_example(servable.input_shape, 2), serialization_format="pt2",
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
    )  # fmt: skip


def model_signature(servable: Servable) -> Any:
    """float32 (-1, C, H, W) in, float32 (-1, classes) out; the ONNX graph's tensors are named (images,
    logits), the pytorch flavor takes one unnamed tensor (its pyfunc refuses a dict of inputs)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    named = servable.fmt == "onnx"
    float32 = np.dtype(np.float32)
    inputs = TensorSpec(float32, (-1, *servable.input_shape), INPUT_NAME if named else None)
    outputs = TensorSpec(float32, (-1, servable.num_classes), OUTPUT_NAME if named else None)
    return ModelSignature(inputs=Schema([inputs]), outputs=Schema([outputs]))


def input_example(input_shape: tuple[int, int, int], batch: int) -> np.ndarray:
    """A fixed batch of images in [0, 1], float32 NCHW."""
    return np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)


def pyfunc_difference(model_uri: str, servable: Servable, seed: int = 0) -> float:
    """Largest |mlflow.pyfunc prediction - PyTorch| over random batches of 1, 3 and 8 images."""
    import mlflow.pyfunc

    with _quiet_logger("mlflow.onnx"):  # "CUDA unavailable here": about this machine, not the model's servers
        loaded = mlflow.pyfunc.load_model(model_uri)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for size in (1, 3, 8):
        x = torch.rand(size, *servable.input_shape, generator=generator)
        with torch.no_grad():
            expected = servable.module(x).numpy()
        worst = max(worst, float(np.abs(pyfunc_logits(loaded.predict(x.numpy())) - expected).max()))
    return worst


def pyfunc_logits(prediction: Any) -> np.ndarray:
    """The logits array of a pyfunc prediction (the onnx flavor returns {output name: array})."""
    if isinstance(prediction, Mapping):
        return np.asarray(prediction[OUTPUT_NAME])
    return np.asarray(prediction)


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Only errors from logger `name` inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


MODELS_SCHEME = "models:/"


@dataclass(frozen=True)
class ModelRef:
    """What a user names to load or export: a run (`run_id`) or a registered version (`name` with its
    `alias` or its `version` number), read from the text alone, before MLflow is asked."""

    run_id: str | None = None
    name: str | None = None
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.run_id is not None:
            return self.run_id
        tail = f"@{self.alias}" if self.alias else f"/{self.version}"
        return f"{MODELS_SCHEME}{self.name}{tail}"


def parse_model_ref(text: str) -> ModelRef:
    """RUN_ID, runs:/RUN_ID[/model], models:/NAME@ALIAS or models:/NAME/VERSION (as MLflow writes them);
    anything else is a one-line UserError."""
    if not text.startswith(MODELS_SCHEME):
        return ModelRef(run_id=parse_run_ref(text))
    body = text[len(MODELS_SCHEME) :]
    name, at, alias = body.partition("@")
    if at and name and alias and "/" not in name + alias:
        return ModelRef(name=name, alias=alias)
    name, slash, version = body.partition("/")
    if slash and name and version.isdigit() and int(version) > 0:
        return ModelRef(name=name, version=version)
    raise UserError(f"unsupported model URI {shown(text)}: give models:/NAME@ALIAS or models:/NAME/VERSION")


def resolve_run(client: MlflowClient, ref: ModelRef) -> str:
    """The run id `ref` names: its own, or that of the registered version (the trial whose export it is)."""
    if ref.run_id is not None:
        return ref.run_id
    name = str(ref.name)
    try:
        if ref.alias is not None:
            version = client.get_model_version_by_alias(name, ref.alias)
        else:
            version = client.get_model_version(name, str(ref.version))
    except Exception as exc:
        raise UserError(f"no registered model version {shown(str(ref))} at {client.tracking_uri}") from exc
    if not version.run_id:
        raise UserError(f"registered model version {shown(str(ref))} names no run")
    return str(version.run_id)
