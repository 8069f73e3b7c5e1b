"""Helpers to run real searches in a temporary directory, the way users and `ray submit` do."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# a search small enough for the default test run: CIFAR ResNet-20 widths on digits, 2 epochs per trial
TINY_CONFIG: dict[str, Any] = {
    "name": "tiny",
    "model": {"arch": "cifar_resnet20"},
    "data": {"name": "digits"},
    "space": {
        "allocators": ["synexp", "uniform"],
        "budget": [0.15, 1.0],
        "lr": [0.001, 0.3],
        "weight_decay": [1.0e-4, 1.0e-3],
        "label_smoothing": [0.0, 0.1],
        "batch_size": [64],
        "epochs": 2,
    },
    "search": {"trials": 4, "concurrency": 1, "seed": 0},
    "asha": {"enabled": True, "grace_period": 1, "reduction_factor": 2},
}


# an experiment state as Tune writes it, holding no trial: enough for search.record.records.tune_state_saved
EMPTY_TUNE_STATE = '{"trial_data": [], "runner_data": {}, "stats": {}}'


def search_env() -> dict[str, str]:
    """Environment for a search subprocess: no telemetry, this checkout importable."""
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    return env


def write_config(folder: Path, config: dict[str, Any], name: str = "config.yaml") -> Path:
    """Write `config` as YAML into `folder`."""
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def copy_search_script(folder: Path) -> Path:
    """search.py alone in `folder`, as `ray submit` uploads it."""
    return Path(shutil.copy(ROOT / "search.py", folder / "search.py"))


def run_search_script(folder: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """`python search.py ARGS` with `folder` as the working directory."""
    return subprocess.run(
        [sys.executable, "search.py", *args], cwd=folder, env=search_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def run_precrop(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`precrop ARGS` (as `python -m search.cli`) in `folder`."""
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=folder, env=search_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def kill_search_when(folder: Path, config: str, ready: Callable[[Path], bool], what: str, timeout: float = 300) -> None:
    """Start `python search.py CONFIG` in `folder` and SIGKILL it (the driver and the Ray processes it
    started) the first time `ready(folder)` holds: an observed event, never a sleep."""
    process = subprocess.Popen(
        [sys.executable, "search.py", config], cwd=folder, env=search_env(), text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not ready(folder):
            assert process.poll() is None, f"the search ended before {what}"
            assert time.monotonic() < deadline, f"the search never got to {what}"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


@dataclass(frozen=True)
class SearchRuns:
    """What a finished search left in `folder/mlflow.db`: its parent (role search) and child (role trial) runs."""

    client: Any  # MlflowClient (imported lazily: this module is imported by tests that never touch MLflow)
    experiment_id: str
    parents: list[Any]
    children: list[Any]


def search_runs(folder: Path, experiment: str) -> SearchRuns:
    """The runs of `experiment` in the sqlite store `folder/mlflow.db`, split by their precrop.role tag."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {folder / 'mlflow.db'}"
    runs = client.search_runs([found.experiment_id])
    by_role = {role: [r for r in runs if r.data.tags.get("precrop.role") == role] for role in ("search", "trial")}
    return SearchRuns(client, found.experiment_id, by_role["search"], by_role["trial"])


# the search that several test modules read: the shipped quickstart (8 trials, 8 epochs, 2 at a time, ASHA's
# Pareto rungs), run once per test session
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@dataclass(frozen=True)
class SharedSearch:
    """The one finished quickstart search that the end-to-end, quickstart-front, Optuna-storage and
    reconcile tests read (experiment "quickstart", 8 trials)."""

    folder: Path
    output: subprocess.CompletedProcess[str]
    runs: SearchRuns

    @property
    def trials(self) -> int:
        """How many trials the config asked for."""
        return int(yaml.safe_load(QUICKSTART.read_text())["search"]["trials"])


@pytest.fixture(scope="session")
def quickstart_search(tmp_path_factory: pytest.TempPathFactory) -> SharedSearch:
    """`python search.py quickstart.yaml` in a folder that holds only those two files, as `ray submit`
    leaves it, run once per test session: every default a new user gets (MLflow and Optuna in SQLite files
    beside the config, Tune's state in ./ray_results), so no tracking, Optuna or storage variable of this
    shell may leak in. tests/conftest.py keeps the tests that read it on one worker."""
    from search.spec.config import OPTUNA_STORAGE_ENV

    folder = tmp_path_factory.mktemp("search")
    copy_search_script(folder)
    shutil.copy(QUICKSTART, folder / "quickstart.yaml")
    assert sorted(p.name for p in folder.iterdir()) == ["quickstart.yaml", "search.py"]
    with pytest.MonkeyPatch.context() as patch:
        for name in (OPTUNA_STORAGE_ENV, "MLFLOW_TRACKING_URI", "PRECROP_STORAGE_PATH"):
            patch.delenv(name, raising=False)
        output = run_search_script(folder, "quickstart.yaml", timeout=900)
    assert output.returncode == 0, output.stdout[-3000:] + output.stderr[-3000:]
    runs = search_runs(folder, "quickstart")
    assert len(runs.parents) == 1
    return SharedSearch(folder, output, runs)
