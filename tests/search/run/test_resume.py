"""Kill the driver (and its local Ray) mid-search, `--resume`, and MLflow still holds exactly one
finished child run per trial, each with every epoch logged; finished trials are not run again."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.search.conftest import (
    TINY_CONFIG,
    copy_search_script,
    kill_search_when,
    run_precrop,
    run_search_script,
    search_env,
    write_config,
)

pytestmark = pytest.mark.ray  # starts a local Ray instance

EPOCHS = 4


def _children(client: MlflowClient) -> list[object]:
    experiment = client.get_experiment_by_name("resumable")
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("precrop.role") == "trial"]


def test_kill_then_resume_keeps_one_finished_run_per_trial(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "resumable"
    config["space"]["epochs"] = EPOCHS
    config["search"] = {"trials": 4, "concurrency": 2, "seed": 1}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": 0}  # a checkpoint every epoch, so the kill lands after one
    copy_search_script(tmp_path)
    write_config(tmp_path, config, "resumable.yaml")
    second_checkpoint = "ray_results/*/run_trial_*/checkpoint_000001"
    kill_search_when(tmp_path, "resumable.yaml", lambda f: any(f.glob(second_checkpoint)), "a second checkpoint")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = _children(client)
    finished_before = sum(r.info.status == "FINISHED" for r in before)  # type: ignore[attr-defined]
    assert any(r.info.status == "RUNNING" for r in before), "no trial was interrupted mid-training"  # type: ignore[attr-defined]

    resumed = run_search_script(tmp_path, "resumable.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # the kill can land while Tune copies its state (or its searcher's) to storage: a state cut short is not
    # restored, and the search starts over under its parent run (search/infra/ray_private.py, seen 2026-12-07)
    restored = "resuming search resumable-" in resumed.stdout
    assert restored or "stopped before Tune saved a readable state" in resumed.stdout, resumed.stdout[-3000:]
    assert resumed.stdout.count("] done ") == (4 - finished_before if restored else 4)

    children = _children(client)
    assert len(children) == 4
    assert len({r.data.tags["precrop.trial_id"] for r in children}) == 4  # type: ignore[attr-defined]
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags  # type: ignore[attr-defined]
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_acc")}  # type: ignore[attr-defined]
        assert steps == set(range(1, EPOCHS + 1))
    parents = [
        r for r in client.search_runs([children[0].info.experiment_id]) if r.data.tags.get("precrop.role") == "search"
    ]  # type: ignore[attr-defined]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


# --- a kill at any moment (issue 15): observable events, not sleeps, decide when the driver dies ---

SMALL_EPOCHS = 3
SMALL_TRIALS = 2  # both run at once (concurrency 2): every kill moment hits a trial


def _small_search(folder: Path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "resumable"
    config["space"]["epochs"] = SMALL_EPOCHS
    config["search"] = {"trials": SMALL_TRIALS, "concurrency": 2, "seed": 3}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": 0}  # checkpoint_N holds epoch N + 1
    copy_search_script(folder)
    write_config(folder, config, "resumable.yaml")


def _checkpoints(folder: Path) -> list[Path]:
    return list(folder.glob("ray_results/*/run_trial_*/checkpoint_*"))


def _trial_runs_in_db(folder: Path) -> int:
    """How many trial runs the search's MLflow database holds, read straight from SQLite (0 before it exists)."""
    database = folder / "mlflow.db"
    if not database.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            query = "SELECT COUNT(*) FROM tags WHERE key = 'precrop.role' AND value = 'trial'"
            return int(db.execute(query).fetchone()[0])
    except sqlite3.Error:  # tables not created yet, or busy
        return 0


# when to kill the driver (and its Ray): the first moment the event is observed
MOMENTS: dict[str, Callable[[Path], bool]] = {
    # the record is written just before the Tuner is built: Tune may have saved nothing yet
    "before Tune saved any state": lambda f: any(f.glob("ray_results/*/precrop-search.json")),
    # a trial opened its MLflow run and is loading, allocating or in its first epoch
    "before the first checkpoint": lambda f: _trial_runs_in_db(f) > 0 and not _checkpoints(f),
    "between two checkpoints": lambda f: any(f.glob("ray_results/*/run_trial_*/checkpoint_000000")),
    "during the last epoch": lambda f: any(f.glob(f"ray_results/*/run_trial_*/checkpoint_{SMALL_EPOCHS - 2:06d}")),
}


def _kill_at(folder: Path, moment: str, timeout: float = 300) -> None:
    kill_search_when(folder, "resumable.yaml", MOMENTS[moment], moment, timeout)


def _lose_the_named_checkpoints(folder: Path) -> None:
    """What a kill inside Ray's window leaves (search/record/checkpoints.py): the trial's next checkpoint on
    storage, and the one Tune's saved state names deleted. Renaming the newest checkpoint of each trial
    to the next index makes that happen for every trial whose saved state names its newest checkpoint."""
    for trial in folder.glob("ray_results/*/run_trial_*"):
        found = sorted(trial.glob("checkpoint_*"))
        if found:
            newest = found[-1]
            newest.rename(trial / f"checkpoint_{int(newest.name.split('_')[1]) + 1:06d}")


def _assert_finished_search(folder: Path, trials: int, epochs: int) -> None:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    children = _children(client)
    assert len({r.data.tags["precrop.trial_id"] for r in children}) == len(children) == trials  # type: ignore[attr-defined]
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags  # type: ignore[attr-defined]
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_acc")}  # type: ignore[attr-defined]
        assert steps == set(range(1, epochs + 1)), run.data.tags  # type: ignore[attr-defined]
    experiment = client.get_experiment_by_name("resumable")
    assert experiment is not None
    parents = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("precrop.role") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


@pytest.mark.parametrize(
    ("moment", "reconcile_first"),
    [
        pytest.param("before Tune saved any state", False, marks=pytest.mark.slow),
        pytest.param("before the first checkpoint", False, marks=pytest.mark.slow),
        pytest.param("between two checkpoints", True, marks=pytest.mark.slow),
        ("during the last epoch", False),
    ],
)
def test_a_kill_at_any_moment_leaves_a_resumable_search(tmp_path: Path, moment: str, reconcile_first: bool) -> None:
    """Killed at `moment`, with Ray's deletion race on top (the saved state names a deleted checkpoint),
    one `--resume` ends the search: one FINISHED run per trial, every epoch logged, the parent FINISHED.
    With `reconcile_first`, `precrop reconcile` of the killed search (what a user may run first) succeeds."""
    _small_search(tmp_path)
    _kill_at(tmp_path, moment)
    _lose_the_named_checkpoints(tmp_path)
    if reconcile_first:
        search_dir = next(tmp_path.glob("ray_results/resumable-*"))
        reconciled = run_precrop(tmp_path, "reconcile", str(search_dir))
        assert reconciled.returncode == 0, reconciled.stdout[-3000:] + reconciled.stderr[-3000:]
        assert "Traceback" not in reconciled.stderr
    resumed = run_search_script(tmp_path, "resumable.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _assert_finished_search(tmp_path, SMALL_TRIALS, SMALL_EPOCHS)


def _interrupt_search_when(folder: Path, config: str, ready: Callable[[Path], bool]) -> tuple[int, str]:
    """Start `python search.py CONFIG`, send SIGINT to its process group (what Ctrl-C in a terminal does)
    the first time `ready(folder)` holds, and return its exit code and stderr."""
    process = subprocess.Popen(
        [sys.executable, "search.py", config], cwd=folder, env=search_env(), text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not ready(folder):
            assert process.poll() is None, "the search ended before it could be interrupted"
            assert time.monotonic() < deadline, "the search never got to its first checkpoint"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    return process.returncode, err


@pytest.mark.slow
def test_ctrl_c_ends_interrupted_and_resume_finishes_each_epoch_once(tmp_path: Path) -> None:
    """Ctrl-C mid-training: exit 130 with the resume hint, the parent run KILLED, the open trials labelled
    interrupted (never "stopped early by ASHA", though Tune stops them as ASHA does); then `--resume`
    finishes every trial with one value per epoch."""
    epochs = 6  # the interrupt lands after epoch 1 of a trial: 5 epochs are left, so the search cannot end first
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "resumable"
    config["space"]["epochs"] = epochs
    config["search"] = {"trials": SMALL_TRIALS, "concurrency": 2, "seed": 3}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": 0}
    copy_search_script(tmp_path)
    write_config(tmp_path, config, "resumable.yaml")

    code, err = _interrupt_search_when(tmp_path, "resumable.yaml", MOMENTS["between two checkpoints"])
    assert code == 130, err[-3000:]
    assert "interrupted: resume with --resume" in err and err.strip().endswith("precrop: interrupted"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = _children(client)
    outcomes = [r.data.tags.get("precrop.outcome") for r in children]  # type: ignore[attr-defined]
    assert "interrupted" in outcomes and "stopped" not in outcomes, outcomes
    assert not any(r.info.status == "RUNNING" for r in children)  # type: ignore[attr-defined]
    experiment = client.get_experiment_by_name("resumable")
    assert experiment is not None
    parents = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("precrop.role") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "KILLED"

    resumed = run_search_script(tmp_path, "resumable.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _assert_finished_search(tmp_path, SMALL_TRIALS, epochs)
    for run in _children(client):
        history = client.get_metric_history(run.info.run_id, "val_acc")  # type: ignore[attr-defined]
        assert len(history) == epochs, [m.step for m in history]


# --- the fallback itself, without a Ray cluster ---


def _write_checkpoint(folder: Path, epoch: int, run_id: str = "run-1") -> Path:
    """A trial checkpoint as search/run/trial.py writes it (loop state, run id, latency), after `epoch`."""
    from trainers.checkpoint import save_train_state

    folder.mkdir(parents=True)
    history = [{"epoch": float(e), "val_acc": e / 10} for e in range(1, epoch + 1)]
    save_train_state(folder, {"epoch": epoch, "history": history})
    (folder / "trial.json").write_text(json.dumps({"run_id": run_id, "latency_ms": 1.5}))
    return folder


def test_read_checkpoint_falls_back_to_the_newest_readable_one(tmp_path: Path) -> None:
    from ray import tune

    from search.record.checkpoints import read_checkpoint

    trial = tmp_path / "run_trial_x"
    _write_checkpoint(trial / "checkpoint_000001", epoch=2)
    _write_checkpoint(trial / "checkpoint_000002", epoch=3)
    assert read_checkpoint(tune.Checkpoint(str(trial / "checkpoint_000001"))).state["epoch"] == 2  # type: ignore[union-attr]

    gone = tune.Checkpoint(str(trial / "checkpoint_000000"))  # what Tune's saved state names; deleted
    resume = read_checkpoint(gone)
    assert resume is not None and resume.state["epoch"] == 3 and resume.run_id == "run-1"

    # a checkpoint cut short while it was written (a kill) is skipped; so is anything not named checkpoint_N
    partial = trial / "checkpoint_000003"
    partial.mkdir()
    (partial / "train_state.pt").write_bytes(b"PK\x03\x04 cut short")
    _write_checkpoint(trial / "checkpoint_latest", epoch=9)
    resume = read_checkpoint(gone)
    assert resume is not None and resume.state["epoch"] == 3

    # nothing readable left: the trial starts over (in its own run, found by its trial-id tag)
    for name in ("checkpoint_000001", "checkpoint_000002"):
        (trial / name / "train_state.pt").unlink()
    assert read_checkpoint(gone) is None
    assert read_checkpoint(tune.Checkpoint(str(tmp_path / "no_trial_dir" / "checkpoint_000000"))) is None


def _stub_trial(storage_path: Path) -> Any:
    from ray import tune
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(storage_path), experiment_dir_name="exp", trial_dir_name="run_trial_x")
    trial = Trial("run_trial", config={}, trial_id="x", storage=storage, stub=True,
                  placement_group_factory=PlacementGroupFactory([{"CPU": 1}]),
                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1))  # fmt: skip
    trial.create_placement_group_factory()  # as Tune does when it adds a trial
    return trial


def test_tune_is_pointed_at_a_checkpoint_that_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray's own bookkeeping reproduces the race: the state saved after checkpoint 0 names it, Ray deletes
    it when checkpoint 1 comes in, and the trial restored from that state is repaired before it starts."""
    from ray import tune
    from ray.train._internal.session import _TrainingResult
    from ray.tune.experiment import Trial

    from search.run.progress import ProgressAndRunCloser

    live = _stub_trial(tmp_path)
    folder = tmp_path / "exp" / "run_trial_x"

    def report(index: int) -> None:
        path = _write_checkpoint(folder / f"checkpoint_{index:06d}", epoch=index + 1)
        metrics = {"epoch": index + 1, "training_iteration": index + 1, "val_acc": 0.5}
        live.on_checkpoint(_TrainingResult(tune.Checkpoint(str(path)), metrics))

    report(0)
    saved = live.get_json_state()  # the experiment state on storage still says this ...
    report(1)  # ... when Ray deletes checkpoint_000000 (num_to_keep=1) and the driver is killed
    assert not (folder / "checkpoint_000000").exists()

    restored = Trial.from_json_state(saved[0], stub=True)
    restored.restore_run_metadata(saved[1])
    assert restored.status == "PENDING" and restored.checkpoint.path.endswith("checkpoint_000000")

    closer = ProgressAndRunCloser("sqlite:///unused.db", "0", "parent", trials=1, cost="macs")
    del closer.__dict__["checked_checkpoints"]  # as unpickled from a search started before this fix
    closer.on_step_begin(0, [restored])
    assert "x: its checkpoint checkpoint_000000 is gone from storage; it continues from checkpoint_000001" in (
        capsys.readouterr().out
    )
    assert restored.checkpoint.path == str(folder / "checkpoint_000001")
    result = restored.latest_checkpoint_result
    assert result.metrics["training_iteration"] == 2 and result.metrics["val_acc"] == 0.2
    assert restored.storage.current_checkpoint_index == 1  # its next checkpoint is checkpoint_000002
    again = Trial.from_json_state(restored.get_json_state()[0], stub=True)  # what the next state save holds
    again.restore_run_metadata(restored.get_json_state()[1])
    assert again.checkpoint.path == str(folder / "checkpoint_000001")

    closer.on_step_begin(1, [restored])  # checked once
    assert capsys.readouterr().out == ""

    # no readable checkpoint at all: Tune starts the trial over rather than failing it
    restored = Trial.from_json_state(saved[0], stub=True)
    restored.restore_run_metadata(saved[1])
    (folder / "checkpoint_000001" / "train_state.pt").unlink()
    ProgressAndRunCloser("sqlite:///unused.db", "0", "parent", trials=1, cost="macs").on_step_begin(0, [restored])
    assert "no other is readable; it starts over" in capsys.readouterr().out
    assert restored.checkpoint is None


# --- what the end of a search and `precrop reconcile` say when files are broken ---


class _Client:
    """Just what the driver asks of MLflow when a search's end failed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def log_batch(self, run_id: str, **batch: Any) -> None:
        self.calls.append(("log_batch", run_id))

    def set_terminated(self, run_id: str, status: str) -> None:
        self.calls.append(("set_terminated", (run_id, status)))


def test_a_local_file_error_at_the_end_names_the_path_not_mlflow() -> None:
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError as RequestsConnectionError

    from precrop.errors import UserError
    from search.record import tracking
    from search.record.records import SearchRecord
    from search.run.driver import _finish_failed

    handle = SearchRecord("s-1", "/data/ray_results/s-1", "sqlite:////data/mlflow.db", "1", "parent", {})
    missing = "/data/ray_results/s-1/run_trial_1/checkpoint_000001/trial.json"
    client = _Client()
    error = _finish_failed(
        client, handle, handle.tracking_uri, FileNotFoundError(2, "No such file or directory", missing)
    )
    assert isinstance(error, UserError) and not isinstance(error, tracking.TrackingError)
    message = str(error)
    assert "\n" not in message and missing in message and "MLflow at" not in message
    assert f"precrop reconcile {handle.path}" in message
    assert ("set_terminated", ("parent", "FAILED")) in client.calls  # not left RUNNING

    for lost in (RequestsConnectionError("refused"), MlflowException("API request failed"), ConnectionRefusedError()):
        client = _Client()
        error = _finish_failed(client, handle, handle.tracking_uri, lost)
        assert isinstance(error, tracking.TrackingError) and "MLflow at sqlite:////data/mlflow.db stopped" in str(error)
        assert client.calls == []  # the server is gone: `precrop reconcile` ends the parent later

    bug = KeyError("val_acc")
    client = _Client()
    assert _finish_failed(client, handle, handle.tracking_uri, bug) is bug
    assert ("set_terminated", ("parent", "FAILED")) in client.calls


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"experiment_state-2026-01-01_00-00-00.json": '{"trial_data": [["{"stub'}, "no readable Tune state"),
        (
            {"experiment_state-2026-01-01_00-00-00.json": '{"trial_data": [["{not json", "{}"]]}'},
            "no readable Tune state",
        ),
        ({}, "no readable Tune state"),  # killed before Tune saved anything
        ({"precrop-search.json": '{"name": "s"}'}, "is not a search directory"),
        ({"precrop-search.json": "[1, 2"}, "is not a search directory"),
    ],
)
def test_reconcile_of_a_broken_search_dir_says_one_line(
    tmp_path: Path, files: dict[str, str], says: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from search.cli import main
    from search.spec.parse import parse_config

    folder = tmp_path / "ray_results" / "s-1"
    folder.mkdir(parents=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = {"name": "s-1", "path": str(folder), "tracking_uri": uri, "experiment_id": "0",
              "parent_run_id": "0" * 32, "config": parse_config(TINY_CONFIG).to_dict()}  # fmt: skip
    (folder / "precrop-search.json").write_text(json.dumps(record))
    for name, text in files.items():
        (folder / name).write_text(text)
    capfd.readouterr()
    code = main(["reconcile", str(folder)])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("precrop: error: ") and says in lines[0], lines
