"""A search on the user's own model (`model.arch: module.path:callable`): the module lives in a directory of
its own, importable by the driver through PYTHONPATH only, and every trial worker rebuilds the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from precrop.width.plan import WidthPlan
from search.run.cluster import worker_runtime_env
from tests.search.conftest import TINY_CONFIG, copy_search_script, search_env, search_runs, write_config

MODULE = """
from torch import nn


def small_cnn(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )
"""
SOURCE = "custom_search_models:small_cnn"


def test_runtime_env_ships_only_a_module_that_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "custom_runtime_models.py").write_text(MODULE)
    monkeypatch.setattr(sys, "path", [*sys.path, str(lib)])
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    shipped = worker_runtime_env("custom_runtime_models:small_cnn")
    assert shipped == {"py_modules": [str(lib.resolve() / "custom_runtime_models.py")]}
    assert worker_runtime_env("cifar_resnet20") == {}
    assert worker_runtime_env("timm:resnet10t") == {}
    assert worker_runtime_env("torchvision.models:resnet18") == {}  # installed: on every node already
    assert worker_runtime_env("precrop.nn.zoo.cifar_models:resnet18_cifar") == {}  # this project's own


@pytest.mark.ray
@pytest.mark.slow  # a whole search (about 25 s); the plan-records-the-source path is covered without Ray
def test_search_on_a_custom_model(tmp_path: Path) -> None:
    lib, run = tmp_path / "lib", tmp_path / "run"
    lib.mkdir()
    run.mkdir()
    (lib / "custom_search_models.py").write_text(MODULE)
    copy_search_script(run)
    config = json.loads(json.dumps(TINY_CONFIG))
    config["model"] = {"arch": SOURCE}
    config["space"].update(allocators=["synexp"], budget=[0.3, 0.8], epochs=1)
    config["search"].update(trials=2)
    config["asha"] = {"enabled": False}
    write_config(run, config)
    env = {**search_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(lib), os.environ.get("PYTHONPATH")]))}
    output = subprocess.run(
        [sys.executable, "search.py", "config.yaml"], cwd=run, env=env, capture_output=True, text=True, timeout=400
    )
    assert output.returncode == 0, output.stdout[-3000:] + output.stderr[-3000:]
    runs = search_runs(run, "tiny")
    client, children = runs.client, runs.children
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["precrop.outcome"] == "completed"
        assert child.data.params["arch"] == SOURCE
        saved = client.download_artifacts(child.info.run_id, "plan/plan.json", str(tmp_path / child.info.run_id))
        plan = WidthPlan.from_json(Path(saved).read_text())
        assert plan.arch == SOURCE and plan.input_shape == (3, 8, 8) and plan.num_classes == 10
        assert plan.counted.macs <= 0.8 * plan.base.macs
