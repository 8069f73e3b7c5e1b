"""Faults inside a search: a trial that diverges fails alone (with its reason) and the search goes on;
a trial whose process is killed mid-training is retried from its checkpoint in the same MLflow run."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.search.conftest import TINY_CONFIG, run_precrop, search_env, write_config

pytestmark = pytest.mark.ray  # starts a local Ray instance


def _trial_runs(folder: Path, experiment: str) -> list[Any]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return [r for r in client.search_runs([found.experiment_id]) if r.data.tags.get("precrop.role") == "trial"]


def test_a_diverging_trial_fails_alone_with_its_reason(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "diverging"
    # log-uniform over 9 decades; with seed 3 the search's seeded first points (search/space.py
    # initial_points) draw lr 0.14 (it trains) and 1.8e5: with weight decay 1e-3 every step then
    # multiplies the weights by about -175, so the loss turns non-finite within the epoch
    config["space"].update(lr=[1.0e-3, 1.0e6], weight_decay=[1.0e-3, 1.0e-3], epochs=1, budget=[0.5, 0.5])
    config["search"] = {"trials": 4, "concurrency": 1, "seed": 3}
    config["asha"] = {"enabled": False}
    write_config(tmp_path, config)
    result = run_precrop(tmp_path, "search", "config.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    runs = _trial_runs(tmp_path, "diverging")
    assert len(runs) == 4
    diverged = [r for r in runs if r.data.tags.get("precrop.outcome") == "diverged"]
    completed = [r for r in runs if r.data.tags.get("precrop.outcome") == "completed"]
    assert diverged and completed, [(r.data.params.get("recipe.lr"), r.data.tags.get("precrop.outcome")) for r in runs]
    assert len(diverged) + len(completed) == 4
    for run in diverged:
        assert run.info.status == "FAILED"
        assert "non-finite" in run.data.tags["precrop.reason"] or "nan" in run.data.tags["precrop.reason"].lower()
        assert float(run.data.params["recipe.lr"]) > 1.0
        # no made-up accuracy: only finished epochs (steps >= 1) carry val_acc
        history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run.info.run_id, "val_acc")
        assert all(m.step >= 1 for m in history), [(m.step, m.value) for m in history]
    for run in completed:
        assert run.info.status == "FINISHED"
    assert f"{len(diverged)} failed" in result.stdout  # the summary counts them; the front is built from the rest
    assert "Pareto front" in result.stdout


def _last_result(folder: Path) -> dict[str, Any] | None:
    files = list(folder.glob("ray_results/*/run_trial_*/result.json"))
    if not files:
        return None
    lines = files[0].read_text().strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def test_a_killed_trial_process_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    epochs = 6
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "killed"
    config["space"].update(epochs=epochs, budget=[1.0, 1.0], lr=[0.05, 0.05])
    config["search"] = {"trials": 1, "concurrency": 1, "seed": 0}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": 0, "max_failures": 2}
    write_config(tmp_path, config)
    search = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "search", "config.yaml"], cwd=tmp_path, env=search_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        last = _last_result(tmp_path)
        while last is None or last["epoch"] < 2:
            assert search.poll() is None, "the search ended before its trial could be killed"
            assert time.monotonic() < deadline, "the trial did not reach epoch 2 in time"
            time.sleep(0.1)
            last = _last_result(tmp_path)
        os.kill(int(last["pid"]), signal.SIGKILL)  # the trial's worker process, in the middle of epoch 3
        killed_after = int(last["epoch"])
        stdout, stderr = search.communicate(timeout=400)
    finally:
        if search.poll() is None:
            search.kill()
    assert search.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "retry " in stdout and "restarting from its last checkpoint" in stdout
    assert killed_after < epochs

    (run,) = _trial_runs(tmp_path, "killed")
    assert run.info.status == "FINISHED"
    assert run.data.tags["precrop.attempts"] == "2"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    # resumed, not restarted: the epochs before the kill are not trained (or logged) twice
    assert sorted(steps) == list(range(1, epochs + 1)), steps
    pids = {json.loads(line)["pid"] for line in _result_lines(tmp_path)}
    assert len(pids) == 2  # two worker processes reported: the killed one and its replacement


def _result_lines(folder: Path) -> list[str]:
    (path,) = folder.glob("ray_results/*/run_trial_*/result.json")
    return path.read_text().strip().splitlines()
