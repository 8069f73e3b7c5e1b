"""MLflow going away: trials keep training, the search says so in one line and keeps its results in
Tune, and `precrop reconcile` re-logs them (into the same server once it is back, or a fresh one)."""

from __future__ import annotations

import copy
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.cluster.conftest import START_MLFLOW, _script_env, free_port
from tests.search.conftest import TINY_CONFIG, SharedSearch, run_precrop, search_env, write_config
from tests.search.servers import HoldingProxy

pytestmark = pytest.mark.ray  # starts a local Ray instance

EPOCHS = 3
# fields of a Tune result that are not the trial's metrics (config/lr etc. are caught by their "/")
TUNE_BOOKKEEPING = {"training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "pid", "trial_complete",
                    "tracking_lost", "done", "time_since_restore", "iterations_since_restore"}  # fmt: skip


def _config(name: str, trials: int, epochs: int = EPOCHS) -> dict[str, Any]:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = name
    config["space"]["epochs"] = epochs
    config["search"] = {"trials": trials, "concurrency": 1, "seed": 3}
    config["asha"] = {"enabled": False}
    return config


def _search_dir(folder: Path) -> Path:
    (found,) = [p.parent for p in folder.glob("ray_results/*/precrop-search.json")]
    return found


def _trial_runs(client: MlflowClient, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id])
    return [r for r in runs if r.data.tags.get("precrop.role") == "trial"]


def _assert_fully_logged(client: MlflowClient, experiment: str, trials: int, epochs: int) -> None:
    """Every trial has one FINISHED run with each epoch's metrics once, its plan, weights and params."""
    runs = _trial_runs(client, experiment)
    assert len(runs) == trials
    assert len({r.data.tags["precrop.trial_id"] for r in runs}) == trials
    for run in runs:
        run_id = run.info.run_id
        assert run.info.status == "FINISHED", run.data.tags
        assert run.data.tags["precrop.outcome"] == "completed"
        for key in ("val_acc", "train_loss", "val_loss"):
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)
        assert {m.step for m in client.get_metric_history(run_id, "macs")} == {0}
        assert run.data.params["allocator"] in ("synexp", "uniform")
        bookkeeping = {k for k in run.data.metrics if "/" in k or k in TUNE_BOOKKEEPING}
        assert not bookkeeping, f"Tune's result fields logged as metrics: {sorted(bookkeeping)}"
        assert float(run.data.metrics["final_val_acc"]) == float(run.data.metrics["val_acc"])
        artifacts = {f.path for folder in ("plan", "model") for f in client.list_artifacts(run_id, folder)}
        assert {"plan/plan.json", "plan/widths.txt", "model/plan.json", "model/model.pt"} <= artifacts
    everything = client.search_runs([runs[0].info.experiment_id])
    parents = [r for r in everything if r.data.tags.get("precrop.role") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "pareto.png" in {f.path for f in client.list_artifacts(parents[0].info.run_id)}
    assert any(r.data.tags.get("pareto") == "true" for r in _trial_runs(client, experiment))


def _assert_same_metric_names(original: MlflowClient, relogged: MlflowClient, experiment: str) -> None:
    """Re-logged runs hold the trials' own metrics, no more (Tune's bookkeeping stays out), and no fewer
    except the trial's wall-clock timings and its process's memory, which only the trial itself can measure."""
    names = {
        side: {r.data.tags["precrop.trial_id"]: set(r.data.metrics) for r in _trial_runs(client, experiment)}
        for side, client in (("original", original), ("relogged", relogged))
    }
    assert names["original"].keys() == names["relogged"].keys()
    for trial, logged in names["original"].items():
        again = names["relogged"][trial]
        assert again <= logged, again - logged
        measured_by_the_trial = {"time_setup_s", "time_reporting_s", "time_training_s", "worker_rss_start_mb",
                                 "worker_rss_peak_mb"}  # fmt: skip
        assert logged - again <= measured_by_the_trial, logged - again


def _assert_relogged_as_logged(original: MlflowClient, relogged: MlflowClient, experiment: str) -> None:
    """Every trial run of `original` is in `relogged` once: same status and outcome, each epoch's metrics at
    the same steps, the same plan and model artifacts; the parent is FINISHED with the front's plot."""
    before = {r.data.tags["precrop.trial_id"]: r for r in _trial_runs(original, experiment)}
    after = {r.data.tags["precrop.trial_id"]: r for r in _trial_runs(relogged, experiment)}
    assert len(after) == len(_trial_runs(relogged, experiment)), "a trial was re-logged twice"
    assert after.keys() == before.keys()
    for trial, run in before.items():
        again = after[trial]
        assert again.info.status == run.info.status
        assert again.data.tags["precrop.outcome"] == run.data.tags["precrop.outcome"]
        assert again.data.params["allocator"] == run.data.params["allocator"]
        for key in ("val_acc", "train_loss", "val_loss", "macs"):
            steps = [sorted(m.step for m in c.get_metric_history(r.info.run_id, key))
                     for c, r in ((original, run), (relogged, again))]  # fmt: skip
            assert steps[0] == steps[1], (trial, key, steps)
        files = [{f.path for d in ("plan", "model") for f in c.list_artifacts(r.info.run_id, d)}
                 for c, r in ((original, run), (relogged, again))]  # fmt: skip
        assert files[0] == files[1], (trial, files)
    parents = [r for r in relogged.search_runs([next(iter(after.values())).info.experiment_id])
               if r.data.tags.get("precrop.role") == "search"]  # fmt: skip
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "pareto.png" in {f.path for f in relogged.list_artifacts(parents[0].info.run_id)}
    assert {r.data.tags.get("pareto") for r in after.values()} == {r.data.tags.get("pareto") for r in before.values()}


def test_reconcile_relogs_a_whole_search_into_an_empty_tracking_store(
    tmp_path: Path, quickstart_search: SharedSearch
) -> None:
    """The worst case, a server that came back with an empty database: everything is logged again (the
    quickstart's trials: completed ones and ones ASHA stopped), and a second pass adds nothing."""
    folder = Path(shutil.copytree(quickstart_search.folder, tmp_path / "search"))  # reconcile records new ids
    assert "stopped early by ASHA" in quickstart_search.output.stdout, "the search no longer has a stopped trial"
    search_dir = _search_dir(folder)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    again = run_precrop(folder, "reconcile", str(search_dir), "--tracking-uri", fresh)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "parent run is not in this MLflow" in again.stdout
    assert "8 runs created" in again.stdout
    original = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    _assert_relogged_as_logged(original, MlflowClient(fresh), "quickstart")
    _assert_same_metric_names(original, MlflowClient(fresh), "quickstart")
    # idempotent: a second pass finds nothing to add and the original store is already complete
    third = run_precrop(folder, "reconcile", str(search_dir), "--tracking-uri", fresh)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "MLflow matches Tune for all 8 trials" in third.stdout
    _assert_relogged_as_logged(original, MlflowClient(fresh), "quickstart")


def test_reconcile_of_a_folder_that_is_no_search_is_one_line(tmp_path: Path) -> None:
    result = run_precrop(tmp_path, "reconcile", str(tmp_path))
    assert result.returncode == 2
    expected = f"precrop: error: {tmp_path} is not a search directory (no readable precrop-search.json)"
    assert result.stderr.strip() == expected


class _Server:
    """An MLflow server on 127.0.0.1 (cluster/start_mlflow.sh) that the test can stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = folder / "server.db"

    def start(self) -> None:
        """Start (or restart) it on the same port and database."""
        result = subprocess.run(
            ["bash", str(START_MLFLOW), "--host", "127.0.0.1", "--port", str(self.port), "--backend",
             f"sqlite:///{self.database}", "--artifacts", str(self.folder / "artifacts"), *self._state()],
            env=_script_env(), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def stop(self) -> None:
        """Stop it (the whole process group)."""
        subprocess.run(["bash", str(START_MLFLOW), "--stop", *self._state()], env=_script_env(), timeout=60)

    def _state(self) -> list[str]:
        return ["--state-dir", str(self.folder / "state")]


def _logged_epochs(database: Path) -> int:
    """The highest val_acc step any run has in the server's database (read directly: the server may be busy)."""
    if not database.exists():
        return 0
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
        try:
            row = db.execute("SELECT MAX(step) FROM metrics WHERE key = 'val_acc'").fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0] or 0)


def _start_search(folder: Path, tracking_uri: str, **env: str) -> subprocess.Popen[str]:
    """`precrop search config.yaml` in `folder`, logging to `tracking_uri`, Tune's state in folder/ray_results."""
    env = {**search_env(), "MLFLOW_TRACKING_URI": tracking_uri, "PRECROP_STORAGE_PATH": str(folder / "ray_results"),
           **env}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "search", "config.yaml"], cwd=folder, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_server_lost_mid_search_then_reconciled(tmp_path: Path) -> None:
    server = _Server(tmp_path)
    server.start()
    epochs = 4
    write_config(tmp_path, _config("lost", trials=3, epochs=epochs))
    search = _start_search(tmp_path, server.url)
    try:
        deadline = time.monotonic() + 240
        while _logged_epochs(server.database) < 1:
            assert search.poll() is None, "the search ended before the server could be stopped"
            assert time.monotonic() < deadline, "no trial logged an epoch in time"
            time.sleep(0.2)
        server.stop()
        stdout, stderr = search.communicate(timeout=400)
    finally:
        if search.poll() is None:
            search.kill()
        server.stop()
    assert search.returncode == 2, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"precrop: error: MLflow at {server.url} stopped answering"), stderr[-3000:]
    search_dir = _search_dir(tmp_path)
    assert last.endswith(f"run `precrop reconcile {search_dir}`")
    assert "cannot reach MLflow since epoch" in stdout  # the trial that lost it said so, and trained on
    assert stdout.count("] done ") == 3, stdout[-3000:]

    server.start()
    try:
        relogged = run_precrop(tmp_path, "reconcile", str(search_dir), "--tracking-uri", server.url)
        assert relogged.returncode == 0, relogged.stdout[-3000:] + relogged.stderr[-3000:]
        assert "re-logged from Tune" in relogged.stdout
        _assert_fully_logged(MlflowClient(server.url), "lost", trials=3, epochs=epochs)
    finally:
        server.stop()


def _checkpoints(folder: Path) -> int:
    """How many epoch checkpoints a trial of the search has reported so far, at most (Tune uploads each as it
    is reported, numbered from 0, and keeps only the newest)."""
    numbers = [int(p.name.removeprefix("checkpoint_")) for p in folder.glob("ray_results/*/*/checkpoint_*")]
    return max(numbers, default=-1) + 1


@pytest.mark.slow  # about a minute each; the opt-in CI stage runs them
@pytest.mark.parametrize("answers_again", [True, False], ids=["answers again mid-search", "silent to the end"])
def test_a_server_silent_mid_search_holds_up_no_epoch_and_loses_nothing(tmp_path: Path, answers_again: bool) -> None:
    """From the moment the first trial's run exists, the server accepts the trials' metric requests and
    answers none: the trial still trains and stores its epochs, which it could not if any request waited on
    the server. If the server answers again (MLflow's timeout raised to 10 minutes, so nothing gives up
    before), everything queued reaches it and the search ends normally, every epoch logged once. If it stays
    silent (precrop's own bound: 2 x 7 s a request), the search ends in one line, and `precrop reconcile`
    fills the store once the server answers."""
    server = _Server(tmp_path)
    server.start()
    try:
        _silent_mid_search(tmp_path, server, answers_again)
    finally:
        server.stop()


def _silent_mid_search(tmp_path: Path, server: _Server, answers_again: bool) -> None:
    # armed by the first trial run's creation (its tags: only trial runs carry a trial id)
    proxy = HoldingProxy(server.port, hold=b"POST /api/2.0/mlflow/runs/log-batch", arm_marker=b'"precrop.trial_id"')
    epochs = 4
    config = _config("silent", trials=2, epochs=epochs)
    config["ray"] = {"checkpoint_every_s": 0}  # a checkpoint per epoch: what the test watches
    write_config(tmp_path, config)
    search = _start_search(tmp_path, proxy.url, **({"MLFLOW_HTTP_REQUEST_TIMEOUT": "600"} if answers_again else {}))
    try:
        deadline = time.monotonic() + 300
        # every epoch but the last (whose report waits for the run's queued requests, see search/run/trial.py)
        while _checkpoints(tmp_path) < epochs - 1:
            assert search.poll() is None, "the search ended while the server was silent"
            assert time.monotonic() < deadline, f"only {_checkpoints(tmp_path)} epochs stored while MLflow was silent"
            time.sleep(0.2)
        assert proxy.held >= 1 and _logged_epochs(server.database) == 0  # nothing got through meanwhile
        if answers_again:
            proxy.release()
        stdout, stderr = search.communicate(timeout=400)
    finally:
        if search.poll() is None:
            search.kill()
        proxy.release(forward=answers_again)
    try:
        if answers_again:
            assert search.returncode == 0, stdout[-3000:] + stderr[-3000:]
            assert "cannot reach MLflow" not in stdout  # slow, not lost: nothing needed re-logging
        else:
            assert search.returncode == 2, stdout[-3000:] + stderr[-3000:]
            assert "cannot reach MLflow since epoch" in stdout and "Traceback" not in stderr
            last = stderr.strip().splitlines()[-1]
            assert last.startswith(f"precrop: error: MLflow at {proxy.url} stopped answering"), stderr[-3000:]
            relogged = run_precrop(tmp_path, "reconcile", str(_search_dir(tmp_path)), "--tracking-uri", proxy.url)
            assert relogged.returncode == 0, relogged.stdout[-3000:] + relogged.stderr[-3000:]
        _assert_fully_logged(MlflowClient(server.url), "silent", trials=2, epochs=epochs)
    finally:
        proxy.close()
