"""Ray Tune overhead per trial on the quickstart: trial wall time (as the driver sees it) minus the
time spent inside the training loop, for trials of about a minute.

The competitor is the bare training loop itself: `training s` is what the same trial costs without
Ray, MLflow or checkpoints (the loop's own time, measured inside the trial). Everything else a trial
pays (actor start, data loading, allocation, latency measurement, MLflow logging, checkpoints,
tune.report) is overhead. Runs `precrop search configs/quickstart.yaml` with ASHA off, so every trial
trains to the end, in a temporary directory.

    python benchmarks/tune_overhead.py --epochs 100 --trials 4
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from precrop.textui import format_table

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\[\s*([0-9.]+) s\] (start|done )\s+([0-9a-f]+)", re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs per trial (100 = about a minute here)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"space.epochs={args.epochs}", f"search.trials={args.trials}", "asha.enabled=false",
                     f"search.concurrency={args.concurrency}", "name=overhead"]  # fmt: skip
        command = [sys.executable, "-m", "search.cli", "search", str(ROOT / "configs" / "quickstart.yaml")]
        for override in overrides:
            command += ["--set", override]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
            return 1
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        rows, totals = table_rows(done.stdout, client)
    print(f"quickstart trials, {args.epochs} epochs each, {args.concurrency} at a time, ASHA off")
    print(format_table(["trial", "wall s", "training s", "setup s", "reporting s", "rest s", "overhead"], rows))
    wall, training = totals
    print(
        f"all trials: overhead {(wall - training) / wall:.1%} of trial wall time "
        f"({wall - training:.1f} s of {wall:.1f} s)"
    )
    return 0


def table_rows(stdout: str, client: MlflowClient) -> tuple[list[list[str]], tuple[float, float]]:
    """One row per trial: driver-side wall time and the trial's own breakdown from MLflow."""
    starts: dict[str, float] = {}
    wall: dict[str, float] = {}
    for seconds, event, trial in LINE.findall(stdout):
        if event == "start":
            starts[trial] = float(seconds)
        else:
            wall[trial] = float(seconds) - starts[trial]
    experiment = client.get_experiment_by_name("overhead")
    assert experiment is not None
    runs = {r.data.tags.get("precrop.trial_id"): r for r in client.search_runs([experiment.experiment_id])}
    rows, total_wall, total_training = [], 0.0, 0.0
    for trial, seconds in sorted(wall.items()):
        metrics = runs[trial].data.metrics
        training, setup, reporting = metrics["time_training_s"], metrics["time_setup_s"], metrics["time_reporting_s"]
        rest = seconds - training - setup - reporting
        rows.append([trial, f"{seconds:.1f}", f"{training:.1f}", f"{setup:.1f}", f"{reporting:.1f}", f"{rest:.1f}",
                     f"{(seconds - training) / seconds:.1%}"])  # fmt: skip
        total_wall += seconds
        total_training += training
    return rows, (total_wall, total_training)


if __name__ == "__main__":
    sys.exit(main())
