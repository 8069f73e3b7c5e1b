"""Package layering: precrop and trainers never import ray or mlflow."""

from __future__ import annotations

import subprocess
import sys


def test_precrop_does_not_pull_in_ray_or_mlflow() -> None:
    code = (
        "import sys, precrop.cli, precrop.zoo, precrop.tracing, precrop.surgery, precrop.inspect, trainers\n"
        "import trainers.cli, trainers.loop, trainers.measure, trainers.checkpoint, trainers.cifar\n"
        "import trainers.imagefolder, trainers.digits, trainers.synthetic\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
