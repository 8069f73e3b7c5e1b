"""The Pareto scheduler's rungs survive a killed driver and `--resume` (Ray saves no scheduler state).

A search with the default early stopping is killed once Tune's saved experiment state holds a trial
that ended; `--resume` does not run that trial again, so the only way its rung records can be in the
scheduler at the end is through the state the driver saved before the kill (search/run/scheduler.py's
SchedulerStateKeeper). The test reads the scheduler state Tune saved last and asserts every trial is
recorded at the first rung. It also checks that the resumed driver's progress board counts the trials
that ended before the kill.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import ray.cloudpickle as pickle

from tests.search.conftest import TINY_CONFIG, copy_search_script, kill_search_when, run_search_script, write_config

pytestmark = pytest.mark.ray  # starts a local Ray instance

TRIALS = 3


def _saved_state_has_an_ended_trial(folder: Path) -> bool:
    return any("TERMINATED" in state.read_text() for state in folder.glob("ray_results/*/experiment_state-*.json"))


def _scheduler_state(folder: Path) -> dict[str, object]:
    # one file per driver session, named by its start time (the sync gives them all one mtime)
    newest = max(folder.glob("ray_results/*/callback-states-*.pkl"), key=lambda p: p.name)
    states = pickle.loads(newest.read_bytes())
    return next(s["pareto_asha"] for s in states.values() if s and "pareto_asha" in s)


class _RungsSeenBeforeTheKill:
    """Ready once the saved experiment state holds an ended trial and the saved scheduler state, read
    whole, records a rung; keeps that scheduler state. Reading it again after the kill would race the
    kill: Tune copies its files into storage in place, so the kill can cut the copy short."""

    def __init__(self) -> None:
        self.state: dict[str, object] = {}

    def __call__(self, folder: Path) -> bool:
        if not _saved_state_has_an_ended_trial(folder):
            return False
        try:
            state = _scheduler_state(folder)
        except (ValueError, EOFError, pickle.UnpicklingError, StopIteration):  # absent, or a copy under way
            return False
        if not state["rungs"]["1"]:  # type: ignore[index]
            return False
        self.state = state
        return True


def test_pareto_rungs_survive_a_kill_and_resume(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "rungs"
    config["space"]["epochs"] = 3
    config["search"] = {"trials": TRIALS, "concurrency": 1, "seed": 2, "progress_every_s": 0}
    config["asha"] = {"enabled": True, "mode": "pareto", "grace_period": 1, "reduction_factor": 2}
    copy_search_script(tmp_path)
    write_config(tmp_path, config, "rungs.yaml")
    seen = _RungsSeenBeforeTheKill()
    kill_search_when(tmp_path, "rungs.yaml", seen, "a trial ended with its rung saved")
    before = seen.state

    resumed = run_search_script(tmp_path, "rungs.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rerun = resumed.stdout.count("] done ")
    assert rerun < TRIALS, "every trial ran again after the resume: nothing tested"
    # the resumed driver's progress counts the trials that ended before the kill (search/run/live.py)
    counted = [int(n) for n in re.findall(rf"\] done  \S+ \((\d+)/{TRIALS}\)", resumed.stdout)]
    assert counted == list(range(TRIALS - rerun + 1, TRIALS + 1)), resumed.stdout[-3000:]
    progress = [line for line in resumed.stdout.splitlines() if line.startswith("progress ")]
    assert all(f"/{TRIALS} ended" in line for line in progress), progress
    assert progress or not rerun, resumed.stdout[-3000:]  # a line at every epoch (progress_every_s 0)
    after = _scheduler_state(tmp_path)
    # what was recorded before the kill is still there, and every trial reached the first rung
    assert before["rungs"]["1"].items() <= after["rungs"]["1"].items()  # type: ignore[index, attr-defined]
    assert len(after["rungs"]["1"]) == TRIALS, after  # type: ignore[index, arg-type]
