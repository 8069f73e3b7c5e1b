"""Faults inside a search: a trial that diverges fails alone (with its reason) and the search goes on;
a trial whose process is killed mid-training is retried from its checkpoint in the same MLflow run."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.search.conftest import TINY_CONFIG, run_precrop, search_env, search_runs, write_config

pytestmark = pytest.mark.ray  # starts a local Ray instance


def _trial_runs(folder: Path, experiment: str) -> list[Any]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return [r for r in client.search_runs([found.experiment_id]) if r.data.tags.get("precrop.role") == "trial"]


def test_a_diverging_trial_fails_alone_with_its_reason(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "diverging"
    # log-uniform over 9 decades; with seed 3 the search's seeded first points (search/spec/space.py
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


def test_a_search_where_no_trial_trains_to_the_end_fails_in_one_line(tmp_path: Path) -> None:
    """Every trial diverges (lr >= 1e5, as above): the summary says the front is empty, each error line says
    why, the parent run ends FAILED and the command exits 1 with one last line (it exited 0 before)."""
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "hopeless"
    config["space"].update(lr=[1.0e5, 1.0e6], weight_decay=[1.0e-3, 1.0e-3], epochs=1, budget=[0.5, 0.5])
    config["search"] = {"trials": 2, "concurrency": 1, "seed": 3}
    config["asha"] = {"enabled": False}
    write_config(tmp_path, config)
    result = run_precrop(tmp_path, "search", "config.yaml")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "precrop: no trial trained to the end: the error lines above say why each trial ended"
    )
    assert "Traceback" not in result.stderr
    assert "no trial trained to the end: the front is empty" in result.stdout
    runs = search_runs(tmp_path, "hopeless")
    assert [r.data.tags.get("precrop.outcome") for r in runs.children] == ["diverged", "diverged"]
    assert len(runs.parents) == 1 and runs.parents[0].info.status == "FAILED"
    assert runs.parents[0].data.tags["precrop.reason"] == "no trial trained to the end"


@pytest.mark.parametrize(
    "checkpoint_every_s",
    [
        0,  # a checkpoint every epoch: the retry continues right after the last logged epoch
        pytest.param(3600, marks=pytest.mark.slow),  # only epoch 1's: the retry re-trains logged epochs
    ],
)
def test_a_killed_trial_process_resumes_from_its_checkpoint(tmp_path: Path, checkpoint_every_s: int) -> None:
    """Killed mid-training, the trial is retried from its newest checkpoint in the same MLflow run, and its
    metric history keeps one value per epoch however far behind that checkpoint was."""
    epochs = 6 if checkpoint_every_s == 0 else 20  # without per-epoch checkpoints epochs are quicker: more of them
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "killed"
    config["space"].update(epochs=epochs, budget=[1.0, 1.0], lr=[0.05, 0.05])
    config["search"] = {"trials": 1, "concurrency": 1, "seed": 0}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": checkpoint_every_s, "max_failures": 2}
    write_config(tmp_path, config)
    search = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "search", "config.yaml"], cwd=tmp_path, env=search_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while (logged := _logged_epochs(tmp_path)) < 2:
            assert search.poll() is None, "the search ended before its trial could be killed"
            assert time.monotonic() < deadline, "the trial did not reach epoch 2 in time"
            time.sleep(0.1)
        (worker,) = _trial_workers(search.pid)
        os.kill(worker, signal.SIGKILL)  # the trial's worker process, in the middle of a later epoch
        killed_after = logged
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
    # one value per epoch: epochs re-trained after an older checkpoint are not logged twice
    assert sorted(steps) == list(range(1, epochs + 1)), steps
    pids = {json.loads(line)["pid"] for line in _result_lines(tmp_path)}
    assert len(pids) == 2  # two worker processes reported: the killed one and its replacement


def _logged_epochs(folder: Path) -> int:
    """The highest epoch any run of the search has logged so far (0 before there is one).

    Read-only SQL on MLflow's sqlite file: an MlflowClient opened while the search creates the
    database would race it through MLflow's schema migrations.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"file:{folder / 'mlflow.db'}?mode=ro", uri=True)) as db:
            (value,) = db.execute("SELECT MAX(value) FROM metrics WHERE key = 'epoch'").fetchone()
    except sqlite3.OperationalError:  # no file or no table yet, or the writer holds a lock: ask again
        return 0
    return int(value or 0)


def _trial_workers(root: int) -> list[int]:
    """The Ray trial workers (ray::ImplicitFunc) among the descendants of process `root`, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    family, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    workers = []
    for pid in family - {root}:
        try:
            if b"ImplicitFunc" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:
            continue
    return workers


def _result_lines(folder: Path) -> list[str]:
    (path,) = folder.glob("ray_results/*/run_trial_*/result.json")
    return path.read_text().strip().splitlines()


@pytest.mark.slow
def test_a_study_goes_on_when_a_trial_process_is_killed_and_records_it_failed(tmp_path: Path) -> None:
    """A trial worker SIGKILLed mid-training (what Ray's memory monitor does to a worker over the memory
    threshold), with no retries left: that cell is recorded FAILED with a reason, the study trains the other
    cell and still writes its tables (issue 27: the study used to die with a traceback instead)."""
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "killed-study"
    config["space"].update(allocators=["uniform", "synexp"], epochs=30, lr=[0.05, 0.05])
    config["search"] = {"trials": 2, "concurrency": 1, "seed": 0}
    config["asha"] = {"enabled": False}
    config["ray"] = {"max_failures": 0}
    write_config(tmp_path, config)
    study = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "study", "baselines", "config.yaml", "--budgets", "0.5", "--seeds",
         "1", "--out", "result"], cwd=tmp_path, env=search_env(), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while _logged_epochs(tmp_path) < 1:
            assert study.poll() is None, "the study ended before its first trial could be killed"
            assert time.monotonic() < deadline, "the first trial did not log an epoch in time"
            time.sleep(0.1)
        (worker,) = _trial_workers(study.pid)
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = study.communicate(timeout=400)
    finally:
        if study.poll() is None:
            study.kill()
    # Tune itself logs the dead actor's traceback on stderr; the study's own exit code and tables are what count
    assert study.returncode == 0, stdout[-3000:] + stderr[-3000:]
    trials = _trial_runs(tmp_path, "killed-study")
    status = {r.data.params["allocator"]: r.info.status for r in trials}
    assert sorted(status.values()) == ["FAILED", "FINISHED"], status
    failed = next(r for r in trials if r.info.status == "FAILED")
    assert "died" in failed.data.tags["precrop.reason"], failed.data.tags  # Ray's "the actor died unexpectedly"
    assert "1 of 2 cells trained to the end (baselines study)" in stdout, stdout[-3000:]
    assert (tmp_path / "result" / "study.md").exists()
