"""Kill the driver (and its local Ray) mid-search, `--resume`, and MLflow still holds exactly one
finished child run per trial, each with every epoch logged; finished trials are not run again."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from tests.search.conftest import TINY_CONFIG, copy_search_script, run_search_script, search_env, write_config

EPOCHS = 4


def _children(client: MlflowClient) -> list[object]:
    experiment = client.get_experiment_by_name("resumable")
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("precrop.role") == "trial"]


def _wait_for_checkpoint(folder: Path, process: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(folder.glob("ray_results/*/run_trial_*/checkpoint_000001")):
            return
        assert process.poll() is None, "the search ended before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError("no trial reached its second checkpoint in time")


def test_kill_then_resume_keeps_one_finished_run_per_trial(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "resumable"
    config["space"]["epochs"] = EPOCHS
    config["search"] = {"trials": 4, "concurrency": 2, "seed": 1}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": 0}  # a checkpoint every epoch, so the kill lands after one
    copy_search_script(tmp_path)
    write_config(tmp_path, config, "resumable.yaml")
    process = subprocess.Popen(
        [sys.executable, "search.py", "resumable.yaml"], cwd=tmp_path, env=search_env(), text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_checkpoint(tmp_path, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        process.wait(timeout=60)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = _children(client)
    finished_before = sum(r.info.status == "FINISHED" for r in before)  # type: ignore[attr-defined]
    assert any(r.info.status == "RUNNING" for r in before), "no trial was interrupted mid-training"  # type: ignore[attr-defined]

    resumed = run_search_script(tmp_path, "resumable.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming search resumable-" in resumed.stdout
    assert resumed.stdout.count("] done ") == 4 - finished_before

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
