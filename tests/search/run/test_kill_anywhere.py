"""Kill anywhere (issue 19): SIGKILL a search's driver and its process group at a moment told by what it
wrote, never by a sleep, then `--resume`. Whatever the moment, the search ends exactly as an uninterrupted
one: exit 0, the configured number of trials in Tune's state, one FINISHED child run per trial with one
value per epoch, the parent FINISHED, and no process of either Ray left alive (the killed driver's
watchdog, search/run/reaper.py, ends the Ray it started).

Run by CI as `pytest -m kill` (about 6 minutes on 2 cores).
"""

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no type information shipped
import pytest

from search.infra.processes import list_processes, processes_of_ray_started_by
from tests.search.conftest import TINY_CONFIG, copy_search_script, search_env, search_runs, write_config

pytestmark = [pytest.mark.kill, pytest.mark.ray]

TRIALS = 3
EPOCHS = 3
NAME = "killed"
ATTEMPTS = 3  # a moment seen is a moment passed: the few where the search moved on before the kill are redone


def _search(folder: Path, concurrency: int, checkpoint_every_s: float) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = NAME
    config["space"]["epochs"] = EPOCHS
    config["search"] = {"trials": TRIALS, "concurrency": concurrency, "seed": 5}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": checkpoint_every_s}
    copy_search_script(folder)
    write_config(folder, config, "search.yaml")


# ----- what the search has written so far -----


def _tags(folder: Path, key: str) -> list[str]:
    """The values of tag `key` in the search's MLflow database, read straight from SQLite ([] before it exists)."""
    database = folder / "mlflow.db"
    if not database.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            return [row[0] for row in db.execute("SELECT value FROM tags WHERE key = ?", (key,))]
    except sqlite3.Error:  # tables not created yet, or busy
        return []


def _saved_trial_ids(folder: Path) -> set[str] | None:
    """The trial ids in Tune's newest saved experiment state; None before Tune saved one (or while it writes)."""
    states = sorted(folder.glob("ray_results/*/experiment_state-*.json"))
    if not states:
        return None
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, ValueError):
        return None
    return {json.loads(state)["trial_id"] for state, _ in data["trial_data"]}


def _trials_tune_has_not_saved(folder: Path) -> set[str]:
    """Trials whose MLflow run is open but which Tune's saved state does not hold (yet)."""
    saved = _saved_trial_ids(folder)
    return set() if saved is None else set(_tags(folder, "precrop.trial_id")) - saved


def _ray_started(driver: int) -> bool:
    """Whether the driver has started Ray's raylet."""
    try:
        return any(child.name() == "raylet" for child in psutil.Process(driver).children())
    except psutil.NoSuchProcess:
        return False


def _checkpoint(folder: Path, index: int) -> bool:
    return any(folder.glob(f"ray_results/*/run_trial_*/checkpoint_{index:06d}"))


@dataclass(frozen=True)
class Moment:
    """When to kill (`ready`, given the folder and the driver's pid), and what must hold after the kill
    for that moment to have been hit (`hit`)."""

    ready: Callable[[Path, int], bool]
    hit: Callable[[Path], bool]
    concurrency: int = 2
    checkpoint_every_s: float = 0  # a checkpoint every epoch: checkpoint_N holds epoch N + 1


MOMENTS = {
    # Ray runs, the parent run does not exist yet: `--resume` must find nothing and start the search
    "before the parent run": Moment(
        lambda f, pid: _ray_started(pid) and not _tags(f, "precrop.role"), lambda f: not _tags(f, "precrop.role")
    ),
    # a trial opened its run after Tune's last save: Tune's state does not know it (issue 19: 7 trial ids in
    # a 6-trial search and a run left RUNNING). One trial at a time and Tune's default checkpoint period
    # leave that window open for the trial's first epoch.
    "right after a trial starts": Moment(
        lambda f, pid: bool(_trials_tune_has_not_saved(f)),
        lambda f: bool(_trials_tune_has_not_saved(f)),
        concurrency=1,
        checkpoint_every_s=10.0,
    ),
    "right after a checkpoint": Moment(lambda f, pid: _checkpoint(f, 0), lambda f: not _checkpoint(f, EPOCHS - 1)),
    "during the last epoch": Moment(
        lambda f, pid: _checkpoint(f, EPOCHS - 2), lambda f: len(_tags(f, "precrop.outcome")) < TRIALS
    ),
}


# ----- the kill, the resume and the checks -----


def _kill_when(folder: Path, moment: Moment, timeout: float = 300) -> int:
    """Start `python search.py search.yaml`; SIGKILL its process group the first time `moment.ready` holds.
    Returns the driver's pid."""
    process = subprocess.Popen(
        [sys.executable, "search.py", "search.yaml"], cwd=folder, env=search_env(), text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not moment.ready(folder, process.pid):
            assert process.poll() is None, "the search ended before the moment came"
            assert time.monotonic() < deadline, "the search never got to the moment"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    return process.pid


def _watchdog_of(driver: int) -> list[Any]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[-2:] == ["search.run.reaper", str(driver)]:
            found.append(proc)
    return found


def _assert_no_ray_left(driver: int) -> None:
    """No process of a Ray that `driver` started is alive, once its watchdog (if still running) has ended."""
    psutil.wait_procs(_watchdog_of(driver), timeout=120)
    left = processes_of_ray_started_by(list_processes(), driver)
    alive = [p for p in left if psutil.pid_exists(p.pid) and psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"Ray processes of driver {driver} still alive: {[(p.pid, p.name) for p in alive]}"


def _assert_finished_search(folder: Path) -> None:
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    trials = ExperimentAnalysis(str(next(folder.glob(f"ray_results/{NAME}-*")))).trials
    assert len(trials) == TRIALS and all(t.status == Trial.TERMINATED for t in trials), [t.status for t in trials]
    runs = search_runs(folder, NAME)
    assert len(runs.parents) == 1 and runs.parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["precrop.trial_id"] for r in runs.children) == sorted(t.trial_id for t in trials)
    for run in runs.children:
        assert run.info.status == "FINISHED", run.data.tags
        steps = [m.step for m in runs.client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.data.tags, steps)


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_kill_anywhere_then_resume_ends_the_search_as_if_never_killed(tmp_path: Path, moment: str) -> None:
    when = MOMENTS[moment]
    for attempt in range(ATTEMPTS):
        folder = tmp_path / f"attempt-{attempt}"
        folder.mkdir()
        _search(folder, when.concurrency, when.checkpoint_every_s)
        driver = _kill_when(folder, when)
        if when.hit(folder):
            break
    else:
        pytest.fail(f"the search moved past {moment!r} before each of {ATTEMPTS} kills")
    _assert_no_ray_left(driver)

    resumed = subprocess.Popen(
        [sys.executable, "search.py", "search.yaml", "--resume"], cwd=folder, env=search_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    if moment == "before the parent run":
        assert f"no search of config {NAME!r} to resume" in output
    if moment == "right after a trial starts":
        assert "started after Tune's last save and runs again as a new trial" in output
    _assert_finished_search(folder)
    _assert_no_ray_left(resumed.pid)  # a search that ends leaves no Ray behind either
