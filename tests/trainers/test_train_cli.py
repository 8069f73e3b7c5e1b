"""`precrop train`: run directory contents, plan round trip, resume, and one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from precrop.nn.counting import count_cost
from search.cli import main
from trainers.checkpoint import load_model
from trainers.datasets import DataRequest
from trainers.load import load_dataset
from trainers.loop import Trainer, evaluate
from trainers.recipe import TrainConfig

FAST = ["--dataset", "digits", "--batch-size", "64", "--no-measure"]


def test_train_a_cropped_plan_and_reload_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = tmp_path / "plan.json"
    args = ["allocate", "cifar_resnet20", "--macs", "0.5", "--input-size", "8", "--num-classes", "10"]
    assert main([*args, "-o", str(plan_file)]) == 0
    run = tmp_path / "run"
    assert (
        main(["train", "--plan", str(plan_file), "--dataset", "digits", "--epochs", "3", "--test", "-o", str(run)]) == 0
    )
    out = capsys.readouterr().out
    assert "epoch   3/3" in out and "test accuracy" in out and "latency_cpu_b1_ms" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["history"]) == 3
    plan, model = load_model(run)
    assert plan.allocator == "synexp" and plan.budget["macs"] == 0.5
    counted = count_cost(model, plan.input_shape)
    assert counted == plan.counted
    assert metrics["measurement"]["params"] == counted.params and metrics["measurement"]["macs"] == counted.macs
    assert counted.macs <= 0.5 * plan.base.macs
    # the reloaded weights reproduce the recorded test accuracy exactly
    data = load_dataset(DataRequest("digits", seed=0, with_test=True))
    assert data.test is not None
    batches = Trainer(model, data, TrainConfig()).batches(data.test, 1024)
    assert evaluate(model, batches)["accuracy"] == metrics["test"]["accuracy"]


def test_resume_continues_a_finished_run_without_new_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--arch", "cifar_resnet20", *FAST, "--epochs", "2", "-o", str(run)]) == 0
    first = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["train", "--arch", "cifar_resnet20", *FAST, "--epochs", "2", "-o", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 2" in out and "epoch   1/2" not in out
    again = json.loads((run / "metrics.json").read_text())
    assert again["history"] == first["history"]
    saved = torch.load(run / "train_state.pt", weights_only=True)
    assert saved["epoch"] == 2


def test_diverging_run_stops_with_reason_and_writes_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(["train", "--arch", "cifar_resnet20", *FAST, "--lr", "1e12", "--warmup-epochs", "0", "-o", str(run)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("precrop: error: training stopped: training loss became non-finite in epoch 1")
    assert json.loads((run / "metrics.json").read_text())["status"] == "diverged"
    assert not (run / "model.pt").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "search.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "cifar_resnet20", "--dataset", "digits", "--lr", "nan"], "lr must be a finite number"),
        (["--arch", "cifar_resnet20", "--dataset", "cifar10", "--data-dir", "nowhere"], "cifar10 not found"),
        (["--arch", "cifar_resnet20", "--dataset", "mnist"], "unknown data set 'mnist'"),
        (["--arch", "nope", "--dataset", "digits"], "unknown architecture 'nope'"),
        (["--plan", "missing.json", "--dataset", "digits"], "cannot read plan missing.json"),
        (["--arch", "cifar_resnet20", "--dataset", "digits", "--resume"], "--resume needs -o DIR"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plan", "plan.json", "--dataset", "digits"], "is for 3x32x32 inputs"),  # checked after loading data
        (["--arch", "cifar_resnet20", "--dataset", "imagefolder", "--data-dir", "nowhere"], "does not exist"),
        (["--plan", "missing.json", "--dataset", "digits"], "cannot read plan missing.json"),
        (["--arch", "cifar_resnet20", "--dataset", "digits", "--seed", "-5"], "expected a seed"),
    ],
)
def test_a_rejected_run_leaves_no_output_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """-o is checked up front but created only once the data, plan and recipe have all been accepted."""
    monkeypatch.chdir(tmp_path)
    assert main(["allocate", "cifar_resnet20", "--macs", "0.5", "-o", "plan.json"]) == 0
    capsys.readouterr()
    try:
        code = main(["train", *args, "--epochs", "1", "-o", "out/run"])
    except SystemExit as exit_:  # argparse rejects a value by exiting
        code = int(exit_.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_plan_for_other_input_size_is_refused(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    assert main(["allocate", "cifar_resnet20", "--macs", "0.5", "-o", str(plan_file)]) == 0
    result = _cli("train", "--plan", str(plan_file), "--dataset", "digits", cwd=tmp_path)
    assert result.returncode == 2
    assert "is for 3x32x32 inputs and 10 classes, but digits has 3x8x8" in result.stderr
    assert "--input-size 8" in result.stderr


def test_mask_plan_is_refused_not_trained_dense(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    args = ["allocate", "cifar_resnet20", "--macs", "0.5", "--allocator", "random", "--input-size", "8"]
    assert main([*args, "-o", str(plan_file)]) == 0
    result = _cli("train", "--plan", str(plan_file), "--dataset", "digits", "-o", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2
    assert "weight-mask plan (random)" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "model.pt").exists()
