"""Ray Tune overhead per trial on the quickstart: trial wall time (as the driver sees it) minus the
time spent inside the training loop, for trials of about a minute; and how busy the trial slots are.

The competitor is the bare training loop itself: `training s` is what the same trial costs without
Ray, MLflow or checkpoints (the loop's own time, measured inside the trial). Everything else a trial
pays (actor start, data loading, allocation, latency measurement, MLflow logging, checkpoints,
tune.report) is overhead. Runs `precrop search configs/quickstart.yaml` with ASHA off, so every trial
trains to the end, in a temporary directory.

Slot utilization is the trials' own time (each trial's "start" to "done" progress line) over
concurrency x the search's wall time (first "start" to last "done"); the gap is the time between a
trial's "done" and the next "start" on the slot it freed (slots are matched first-freed,
first-reused, from the progress lines alone, so this holds with and without reused actors).

    python benchmarks/tune_overhead.py --epochs 100 --trials 4    # overhead per trial
    python benchmarks/tune_overhead.py --epochs 8 --trials 24     # the quickstart: slot utilization
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
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
    parser.add_argument("--log", help="also write the search's own output (progress lines) to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"space.epochs={args.epochs}", f"search.trials={args.trials}", "asha.enabled=false",
                     f"search.concurrency={args.concurrency}", "name=overhead"]  # fmt: skip
        command = [sys.executable, "-m", "search.cli", "search", str(ROOT / "configs" / "quickstart.yaml")]
        for override in overrides:
            command += ["--set", override]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
        began = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        command_s = time.perf_counter() - began
        if args.log:
            Path(args.log).write_text(done.stdout + done.stderr)
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
    slots = slot_usage(done.stdout, args.concurrency)
    slot_s = args.concurrency * slots.wall
    print(
        f"slots: utilization {slots.utilization:.1%} ({slots.busy:.1f} trial s over {args.concurrency} x "
        f"{slots.wall:.1f} s, first start to last done); gap done -> next start on the same slot: median "
        f"{slots.median_gap:.2f} s, max {slots.max_gap:.2f} s over {len(slots.gaps)} gaps"
    )
    print(
        f"per trial: {(slot_s - training) / len(rows):.2f} slot s besides training ({slot_s:.1f} slot s, "
        f"{training:.1f} s training, {len(rows)} trials)"
    )
    print(
        f"whole command: {command_s:.1f} s (the driver says {slots.search_s}); trial time over "
        f"{args.concurrency} x that: {slots.busy / (args.concurrency * command_s):.1%}"
    )
    return 0


class SlotUsage:
    """Slot utilization and the gaps between one trial's end and the next start on its slot."""

    def __init__(self, busy: float, wall: float, concurrency: int, gaps: list[float], search_s: str) -> None:
        self.busy, self.wall, self.gaps, self.search_s = busy, wall, gaps, search_s
        self.utilization = busy / (concurrency * wall) if wall > 0 else 0.0
        self.median_gap = statistics.median(gaps) if gaps else 0.0
        self.max_gap = max(gaps) if gaps else 0.0


def slot_usage(stdout: str, concurrency: int) -> SlotUsage:
    """Utilization and gaps from the driver's progress lines ("[  12.3 s] start ID", "[  45.6 s] done  ID")."""
    events = sorted((float(seconds), event.strip(), trial) for seconds, event, trial in LINE.findall(stdout))
    starts = {trial: t for t, event, trial in events if event == "start"}
    busy = sum(t - starts[trial] for t, event, trial in events if event == "done" and trial in starts)
    wall = events[-1][0] - events[0][0] if events else 0.0
    freed: list[float] = []  # times at which a slot became free, oldest first
    gaps: list[float] = []
    for t, event, _ in events:
        if event == "done":
            freed.append(t)
        elif freed:  # else the start takes a slot never used before: no gap
            gaps.append(t - freed.pop(0))
    took = re.search(r"search took (\d+ s)", stdout)
    return SlotUsage(busy, wall, concurrency, gaps, took.group(1) if took else "?")


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
