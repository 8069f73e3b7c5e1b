"""`precrop export`: normalization inside the graph, metadata, pt2, runs:/ URIs, and registered MLflow models
that `mlflow.pyfunc` loads and `mlflow models serve` serves with the PyTorch model's logits.

The runs are logged here through search/record/run_logger.py (a digits-sized ResNet-20 with perturbed batch-norm
statistics, saved as plan + state_dict + preprocess.json), so no training is needed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModel
from torch import nn

from precrop.nn.build import build_from_plan, layer_table
from precrop.width.plan import WidthPlan
from search.cli import main
from search.record import tracking
from search.record.models import parse_run_ref
from search.record.run_logger import RunLogger, log_final
from search.results.export import EXTRA_FILE, METADATA_KEYS
from search.spec.schema import Metric
from tests.search.conftest import search_env
from trainers.checkpoint import Preprocess

# channel-distinct statistics, so a missing or channel-swapped normalization shows
PREPROCESS = Preprocess("digits", tuple(f"digit-{i}" for i in range(10)), (3, 8, 8), (0.2, 0.3, 0.4), (0.5, 0.25, 0.4))
TOL = 1e-4


@dataclass(frozen=True)
class Store:
    folder: Path
    client: MlflowClient
    plan: WidthPlan
    model: nn.Module  # the network alone (no normalization), eval mode
    run_id: str  # logged with preprocess.json
    old_run_id: str  # logged as before preprocess.json existed

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    def expected(self, images: np.ndarray) -> np.ndarray:
        """The PyTorch logits of images in [0, 1], normalized here by hand."""
        mean = torch.tensor(PREPROCESS.mean).view(1, -1, 1, 1)
        std = torch.tensor(PREPROCESS.std).view(1, -1, 1, 1)
        with torch.no_grad():
            return self.model((torch.from_numpy(images) - mean) / std).numpy()


def _trained_looking_model(plan: WidthPlan) -> nn.Module:
    """The plan's model with batch-norm running statistics moved away from (0, 1) by a few batches."""
    model = build_from_plan(plan, seed=0)
    model.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *plan.input_shape, generator=generator) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    folder = tmp_path_factory.mktemp("export")
    client = tracking.client_for(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment("exports", artifact_location=(folder / "artifacts").as_uri())
    table = layer_table("cifar_resnet20", 10, 8)
    from precrop.width.allocate import dense_plan

    plan = dense_plan(table)
    model = _trained_looking_model(plan)
    ids = []
    for preprocess in (PREPROCESS, None):
        run_id = str(client.create_run(experiment).info.run_id)
        log_final(RunLogger(client, run_id, strict=True), plan, model.state_dict(), {Metric.FINAL_VAL_ACC: 0.5}, 1,
                  preprocess)  # fmt: skip
        ids.append(run_id)
    return Store(folder, client, plan, model, ids[0], ids[1])


def _images(batch: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, 8, 8), dtype=np.float32)


def _export(store: Store, run: str, fmt: str, out: Path, *extra: str) -> int:
    return main(["export", run, "--format", fmt, "-o", str(out), "--tracking-uri", store.uri, *extra])


def test_the_run_logs_preprocess_json_with_its_model(store: Store) -> None:
    names = {f.path for f in store.client.list_artifacts(store.run_id, "model")}
    assert names == {"model/plan.json", "model/model.pt", "model/preprocess.json"}
    old = {f.path for f in store.client.list_artifacts(store.old_run_id, "model")}
    assert old == {"model/plan.json", "model/model.pt"}


def test_onnx_normalizes_inside_the_graph_and_carries_metadata(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    assert _export(store, f"runs:/{store.run_id}/model", "onnx", out) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and f"wrote {out}" in captured.out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_outputs()[0].name == "logits"
    for batch in (1, 5):
        images = _images(batch)
        got = session.run(None, {"images": images})[0]
        assert got.shape == (batch, 10) and np.abs(got - store.expected(images)).max() <= TOL
    # not vacuous: the raw network on the same images gives other logits
    with torch.no_grad():
        raw = store.model(torch.from_numpy(_images(5))).numpy()
    assert np.abs(raw - store.expected(_images(5))).max() > 0.01

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert set(props) == set(METADATA_KEYS)
    assert props["precrop.run_id"] == store.run_id and props["precrop.format"] == "onnx"
    assert WidthPlan.from_json(props["precrop.width_plan"]) == store.plan
    assert json.loads(props["precrop.classes"]) == list(PREPROCESS.classes)
    assert Preprocess.from_json(props["precrop.preprocessing"]) == PREPROCESS
    spec = json.loads(props["precrop.input"])
    assert spec["shape"] == [-1, 3, 8, 8] and spec["value_range"] == [0.0, 1.0] and spec["normalized_in_graph"]
    assert json.loads(props["precrop.output"])["shape"] == [-1, 10]
    assert props["precrop.version"].count(".") >= 2


def test_pt2_has_a_dynamic_batch_and_its_metadata(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "m.pt2"
    assert _export(store, store.run_id, "pt2", out) == 0
    extra = {EXTRA_FILE: ""}
    program = torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra[EXTRA_FILE])
    assert meta["precrop.run_id"] == store.run_id and meta["precrop.format"] == "pt2"
    for batch in (1, 7):
        images = _images(batch)
        with torch.no_grad():
            got = program.module()(torch.from_numpy(images)).numpy()
        assert np.abs(got - store.expected(images)).max() <= TOL


def test_torchscript_still_exports_but_cannot_be_registered(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    assert _export(store, f"runs:/{store.run_id}", "torchscript", out) == 0
    extra = {EXTRA_FILE: ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra[EXTRA_FILE])["precrop.format"] == "torchscript"
    images = _images(3)
    with torch.no_grad():
        assert np.abs(module(torch.from_numpy(images)).numpy() - store.expected(images)).max() <= TOL
    capsys.readouterr()
    refused = tmp_path / "refused.pt"
    assert _export(store, store.run_id, "torchscript", refused, "--register", "ts") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--register needs --format onnx or pt2" in err
    assert not refused.exists()  # refused before any work


def test_a_run_without_preprocess_json_exports_the_bare_network_and_says_so(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "old.onnx"
    assert _export(store, store.old_run_id, "onnx", out) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no preprocess.json" in err and "already-normalized input" in err
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    spec = json.loads(props["precrop.input"])
    assert spec["normalized_in_graph"] is False and "already-normalized" in spec["note"]
    assert props["precrop.preprocessing"] == "null" and props["precrop.classes"] == "null"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = store.model(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"images": x})[0] - expected).max() <= TOL


@pytest.mark.parametrize(
    ("text", "run_id"),
    [("abc123", "abc123"), ("runs:/abc123", "abc123"), ("runs:/abc123/", "abc123"), ("runs:/abc123/model", "abc123"),
     ("runs:/abc123/model/", "abc123")],
)  # fmt: skip
def test_run_references(text: str, run_id: str) -> None:
    assert parse_run_ref(text) == run_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:/digits/latest", "unsupported model URI 'models:/digits/latest'"),
        ("models:/digits", "give models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("s3://bucket/model", "unsupported URI"),
        ("runs:/abc123/plan", "unsupported run URI"),
        ("runs:/", "is not a run id"),
        ("a b", "is not a run id"),
        ("x" * 500, "(502 characters)"),
    ],
)
def test_an_unsupported_reference_is_one_line_with_exit_2(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # refused before the store is opened: the URI names nothing that exists
    assert main(["export", text, "--format", "onnx", "--tracking-uri", f"sqlite:///{tmp_path / 'no.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and len(err) < 300
    assert list(tmp_path.iterdir()) == []


def test_registration_errors_from_mlflow_are_one_line(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _logged_exports(store, "onnx")
    # MLflow reserves aliases that look like versions (v1, latest)
    assert _export(store, store.run_id, "onnx", tmp_path / "m.onnx", "--register", "bad-alias", "--alias", "v1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("precrop: error: cannot register 'bad-alias' @'v1'")
    # nothing half-registered: no registered model, and the model logged on the way is deleted
    assert store.client.search_registered_models("name = 'bad-alias'") == []
    assert _logged_exports(store, "onnx") == before


def _logged_exports(store: Store, fmt: str) -> list[LoggedModel]:
    """The run's live (not deleted) logged models named export-FMT."""
    experiment = store.client.get_run(store.run_id).info.experiment_id
    found = store.client.search_logged_models([experiment], f"name = 'export-{fmt}'")
    return [m for m in found if m.source_run_id == store.run_id]


@pytest.fixture(scope="module")
def registered(store: Store, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The onnx export of the run, registered as digits-small@candidate; the model URI."""
    out = tmp_path_factory.mktemp("registered") / "m.onnx"
    assert _export(store, store.run_id, "onnx", out, "--register", "digits-small", "--alias", "candidate") == 0
    return "models:/digits-small@candidate"


def test_registered_onnx_loads_with_pyfunc_and_matches_pytorch(
    store: Store, registered: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.models
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    version = store.client.get_model_version_by_alias("digits-small", "candidate")
    assert version.run_id == store.run_id and version.tags["format"] == "onnx"
    loaded = mlflow.pyfunc.load_model(registered)
    images = _images(6, seed=9)
    logits = loaded.predict(images)["logits"]
    assert logits.shape == (6, 10) and np.abs(logits - store.expected(images)).max() <= TOL
    info = mlflow.models.get_model_info(registered)
    metadata = info.metadata or {}
    assert set(metadata) == set(METADATA_KEYS) and metadata["precrop.run_id"] == store.run_id
    inputs = info.signature.inputs.inputs[0]
    assert inputs.name == "images" and inputs.shape == (-1, 3, 8, 8) and str(inputs.type) == "float32"
    # the version is a LoggedModel of the run (its "Logged models" in the MLflow UI)
    logged = {m.artifact_location: m for m in _logged_exports(store, "onnx")}
    source = str(version.source)
    assert logged[source].status == "READY"
    outputs = store.client.get_run(store.run_id).outputs
    assert outputs is not None and logged[source].model_id in {m.model_id for m in outputs.model_outputs}


def test_registered_pt2_loads_with_pyfunc_and_matches_pytorch(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    args = ("--register", "digits-small-pt2", "--alias", "candidate")
    assert _export(store, f"runs:/{store.run_id}/model", "pt2", tmp_path / "m.pt2", *args) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    loaded = mlflow.pyfunc.load_model("models:/digits-small-pt2@candidate")
    for batch in (1, 5):
        images = _images(batch, seed=11)
        assert np.abs(loaded.predict(images) - store.expected(images)).max() <= TOL


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_mlflow_models_serve_answers_with_the_pytorch_logits(store: Store, registered: str) -> None:
    port = _free_port()
    env = {**search_env(), "MLFLOW_TRACKING_URI": store.uri}
    # MLflow starts `uvicorn` by name: the environment's bin folder must be on PATH even when it is not activated
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", registered, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    server = subprocess.Popen(command, env=env, cwd=store.folder, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        give_up = time.monotonic() + 180  # a generous bound on start-up, not a timing assertion
        while not _get(f"http://127.0.0.1:{port}/ping"):
            assert server.poll() is None, "mlflow models serve exited"
            assert time.monotonic() < give_up, "mlflow models serve never answered /ping"
            time.sleep(0.2)
        images = _images(4, seed=21)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        logits = np.asarray(answer["predictions"]["logits"], dtype=np.float32)
        assert logits.shape == (4, 10) and np.abs(logits - store.expected(images)).max() <= TOL
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)


def test_export_takes_a_registered_version_by_alias_and_by_number(
    store: Store, registered: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    number = store.client.get_model_version_by_alias("digits-small", "candidate").version
    for ref in (registered, f"models:/digits-small/{number}"):
        out = tmp_path / f"{ref.rsplit('/', 1)[-1]}.onnx"
        assert _export(store, ref, "onnx", out) == 0, capsys.readouterr().err
        metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert metadata["precrop.run_id"] == store.run_id, ref  # the registered trial's own model
    assert _export(store, "models:/digits-small@nope", "onnx", tmp_path / "x.onnx") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "precrop: error: no registered model version 'models:/digits-small@nope'"
    )


def test_search_load_reads_a_run_a_registered_alias_and_a_folder(store: Store, registered: str, tmp_path: Path) -> None:
    import precrop
    import search

    x = torch.from_numpy(_images(4, seed=9))
    with torch.no_grad():
        expected = store.model(x)
    by_version = f"models:/digits-small/{store.client.get_model_version_by_alias('digits-small', 'candidate').version}"
    for ref in (f"runs:/{store.run_id}", f"runs:/{store.run_id}/model", store.run_id, registered, by_version):
        model, plan = search.load(ref, tracking_uri=store.uri)
        assert plan == store.plan, ref
        with torch.no_grad():
            assert torch.allclose(model(x), expected, atol=1e-6), ref
    precrop.save(tmp_path / "folder", store.model, store.plan)
    model, plan = search.load(str(tmp_path / "folder"))
    with torch.no_grad():
        assert torch.equal(model(x), expected) and plan == store.plan


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("models:/digits-small@nope", "no registered model version"),
        ("models:/digits-small/3", "no registered model version 'models:/digits-small/3'"),
        ("models:/digits-small/latest", "give models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:/digits-small", "give models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("s3://bucket/run", "unsupported URI"),
    ],
)
def test_search_load_refuses_what_it_cannot_read(store: Store, registered: str, ref: str, message: str) -> None:
    import search
    from precrop.errors import UserError

    with pytest.raises(UserError, match=message) as caught:
        search.load(ref, tracking_uri=store.uri)
    assert "\n" not in str(caught.value)
