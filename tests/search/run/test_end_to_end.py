"""The quickstart search (8 trials on digits), run as `ray submit` runs it: search.py alone in an otherwise
empty directory (the shared `quickstart_search`). Then the MLflow structure, artifacts, tags, printed front,
`pareto` and `export`."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from mlflow import MlflowClient

from search.record.models import load_run_bundle, load_run_model
from tests.search.conftest import SharedSearch, run_precrop

pytestmark = pytest.mark.ray  # starts a local Ray instance


@dataclass
class Finished:
    folder: Path
    output: subprocess.CompletedProcess[str]
    trials: int
    epochs: int
    client: MlflowClient
    experiment_id: str
    parent: object
    children: list[object]

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"


@pytest.fixture(scope="module")
def finished(quickstart_search: SharedSearch) -> Finished:
    search, runs = quickstart_search, quickstart_search.runs
    epochs = 8  # configs/quickstart.yaml's space.epochs
    return Finished(
        search.folder, search.output, search.trials, epochs, runs.client, runs.experiment_id, runs.parents[0],
        runs.children,
    )  # fmt: skip


def test_one_parent_and_one_finished_child_per_trial(finished: Finished) -> None:
    parent = finished.parent
    assert parent.info.status == "FINISHED"  # type: ignore[attr-defined]
    assert len(finished.children) == finished.trials == 8
    assert len({c.data.tags["precrop.trial_id"] for c in finished.children}) == 8  # type: ignore[attr-defined]
    for child in finished.children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id  # type: ignore[attr-defined]
        assert child.info.status in ("FINISHED", "KILLED")  # never RUNNING  # type: ignore[attr-defined]
        outcome = child.data.tags["precrop.outcome"]  # type: ignore[attr-defined]
        assert outcome == ("completed" if child.info.status == "FINISHED" else "stopped")  # type: ignore[attr-defined]


def test_children_log_params_plan_metrics_and_weights(finished: Finished) -> None:
    client = finished.client
    for child in finished.children:
        run_id = child.info.run_id  # type: ignore[attr-defined]
        params, metrics = child.data.params, child.data.metrics  # type: ignore[attr-defined]
        assert {"allocator", "budget", "recipe.lr", "recipe.weight_decay", "recipe.batch_size", "arch"} <= set(params)
        assert {"macs", "params", "latency_ms", "val_acc", "train_loss", "epoch"} <= set(metrics)
        plan_files = {f.path for f in client.list_artifacts(run_id, "plan")}
        assert plan_files == {"plan/plan.json", "plan/widths.txt"}
        steps = sorted(m.step for m in client.get_metric_history(run_id, "val_acc"))
        if child.info.status == "FINISHED":  # type: ignore[attr-defined]
            assert steps == list(range(1, finished.epochs + 1))
            model_files = {f.path for f in client.list_artifacts(run_id, "model")}
            assert model_files == {"model/plan.json", "model/model.pt", "model/preprocess.json"}
            plan, _ = load_run_model(client, run_id)
            assert plan.counted.macs == metrics["macs"] and plan.allocator == params["allocator"]
        else:  # stopped at a rung: every epoch up to it, once
            assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) < finished.epochs


def test_front_is_tagged_plotted_and_printed(finished: Finished) -> None:
    client = finished.client
    front = [c for c in finished.children if c.data.tags.get("pareto") == "true"]  # type: ignore[attr-defined]
    others = [c for c in finished.children if c.data.tags.get("pareto") == "false"]  # type: ignore[attr-defined]
    assert front and len(front) + len(others) == finished.trials
    for member in front:
        assert member.info.status == "FINISHED" and 0 <= member.data.metrics["test_acc"] <= 1  # type: ignore[attr-defined]
    stopped = [c for c in finished.children if c.info.status == "KILLED"]  # type: ignore[attr-defined]
    assert stopped, "ASHA stopped no trial with this seed: the test lost its point"
    assert all(c.data.tags["pareto"] == "false" for c in stopped)  # type: ignore[attr-defined]
    parent_id = finished.parent.info.run_id  # type: ignore[attr-defined]
    assert {f.path for f in client.list_artifacts(parent_id)} >= {"pareto.png", "pareto.csv", "pareto.json"}
    printed = set(re.findall(r"^([0-9a-f]{32})\s", finished.output.stdout, flags=re.M))
    assert printed == {c.info.run_id for c in front}  # type: ignore[attr-defined]
    assert "mlflow ui --backend-store-uri" in finished.output.stdout


def test_pareto_command_recomputes_the_same_front(finished: Finished) -> None:
    result = run_precrop(
        finished.folder, "pareto", "--experiment", "quickstart", "--tracking-uri", "sqlite:///mlflow.db", "--json"
    )
    assert result.returncode == 0, result.stderr
    front = {r["run_id"] for r in json.loads(result.stdout)}
    assert front == {c.info.run_id for c in finished.children if c.data.tags["pareto"] == "true"}  # type: ignore[attr-defined]


# onnx in the default run; pt2 and torchscript (each format is also checked without Ray in test_export.py) in -m slow
@pytest.mark.parametrize(
    "fmt", ["onnx", pytest.param("pt2", marks=pytest.mark.slow), pytest.param("torchscript", marks=pytest.mark.slow)]
)
def test_export_round_trip(finished: Finished, fmt: str) -> None:
    member = next(c for c in finished.children if c.data.tags["pareto"] == "true")  # type: ignore[attr-defined]
    run_id = member.info.run_id  # type: ignore[attr-defined]
    out = finished.folder / f"exported-{fmt}"
    register = [] if fmt == "torchscript" else ["--register", f"quickstart-{fmt}"]  # TorchScript: a file only
    args = ["export", f"runs:/{run_id}", "--format", fmt, "-o", str(out), "--tracking-uri", finished.uri, *register]
    result = run_precrop(finished.folder, *args)
    assert result.returncode == 0, result.stderr
    assert "max |export - pytorch|" in result.stdout
    # the exported graph normalizes images in [0, 1] with the digits statistics the trial logged
    loaded = load_run_bundle(finished.client, run_id)
    assert loaded.preprocess is not None and loaded.preprocess.dataset == "digits"
    x = torch.rand(5, *loaded.plan.input_shape)
    mean = torch.tensor(loaded.preprocess.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.preprocess.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = loaded.model((x - mean) / std).numpy()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    elif fmt == "pt2":
        got = torch.export.load(str(out)).module()(x).detach().numpy()
    else:
        got = torch.jit.load(str(out)).eval()(x).detach().numpy()
    assert np.abs(got - expected).max() <= 1e-4
    if register:
        version = finished.client.get_model_version_by_alias(f"quickstart-{fmt}", "candidate")
        assert version.run_id == run_id


def test_export_of_a_run_without_weights_fails_in_one_line(finished: Finished) -> None:
    result = run_precrop(finished.folder, "export", "0" * 32, "--format", "onnx", "--tracking-uri", finished.uri)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no MLflow run" in result.stderr
