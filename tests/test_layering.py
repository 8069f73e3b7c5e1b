"""Package layering: precrop and trainers never import ray or mlflow; the convex programs import no torch."""

from __future__ import annotations

import subprocess
import sys


def test_precrop_does_not_pull_in_ray_or_mlflow() -> None:
    code = (
        "import sys, precrop.cli, precrop.zoo, precrop.tracing, precrop.surgery, precrop.inspect, trainers\n"
        "import trainers.cli, trainers.loop, trainers.measure, trainers.checkpoint, trainers.cifar\n"
        "import trainers.imagefolder, trainers.digits, trainers.synthetic\n"
        "import precrop.methods, precrop.masks, precrop.saliency, precrop.channel_rank, precrop.density_masks\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_convex_programs_import_no_torch() -> None:
    code = (
        "import sys, precrop.costmodel, precrop.density, precrop.mapping, precrop.rounding, precrop.posynomial\n"
        "import precrop.allocate, precrop.plan\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
