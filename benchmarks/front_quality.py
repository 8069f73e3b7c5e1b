"""Front quality for the compute spent: one search space and trial function under four early-stopping rules.

    (a) none       every trial trains to the end (`asha.enabled=false`)
    (b) accuracy   Ray's ASHA on val_acc alone (`asha.mode=accuracy`, the old default)
    (c) pareto     ours: rungs ranked by dominance on (val_acc, MACs) (`asha.mode=pareto`, search/run/scheduler.py)
    (d) moasha     Syne Tune's MOASHA (non-dominated sort + epsilon-net at each rung) deciding the
                   same Ray trials through a small adapter below; needs `pip install -e '.[bench]'`

Everything else is identical: the searcher (TPE with the same seed and the same spread first
budgets), the trial function, the trial count, the rungs (grace period, reduction factor), the
concurrency. Every search runs alone in its own process and temporary directory, one after another.

Per search: the hypervolume of the front of trials that trained to the end (the staircase of
val_acc over 1 - macs_fraction, reference point cost 1 and accuracy 0, so 1.0 is a free model with
100% accuracy), the front's size, the MACs range it covers (most / least expensive member), the
search's wall time and its slot utilization (trials' start-to-done time over concurrency x wall).
The table gives each rule's mean +- std over seeds and, paired by seed, its ratio to (a).

    python benchmarks/front_quality.py --dataset digits --seeds 3
    python benchmarks/front_quality.py --dataset cifar --seeds 3 --trials 12 --epochs 4 --train-subset 1500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from tune_overhead import slot_usage

from precrop.textui import format_table

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
RULES = {"none": ["asha.enabled=false"], "accuracy": ["asha.mode=accuracy"], "pareto": ["asha.mode=pareto"],
         "moasha": ["asha.mode=pareto"]}  # fmt: skip


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by (cost fraction, accuracy) points: union of [cost, 1] x [0, accuracy] rectangles."""
    saving = sorted(((1.0 - cost, acc) for cost, acc in points if cost < 1 and acc > 0), reverse=True)
    area, best = 0.0, 0.0
    for i, (x, y) in enumerate(saving):
        best = max(best, y)
        area += (x - (saving[i + 1][0] if i + 1 < len(saving) else 0.0)) * best
    return area


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points no other point beats in both (cheaper or equal and more accurate or equal)."""
    return sorted({p for p in points if not any(q != p and q[0] <= p[0] and q[1] >= p[1] for q in points)})


def completed_points(folder: Path, experiment: str) -> list[tuple[float, float]]:
    """(macs_fraction, val_acc) of every trial that trained to the end, read from MLflow."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} in {folder}"
    points = []
    for run in client.search_runs([found.experiment_id]):
        if run.data.tags.get("precrop.role") == "trial" and run.data.tags.get("precrop.outcome") == "completed":
            points.append((run.data.metrics["macs_fraction"], run.data.metrics["final_val_acc"]))
    return points


def run_search(rule: str, config: Path, overrides: list[str], folder: Path, concurrency: int) -> dict[str, Any]:
    """One search in `folder` (a fresh process); its front and timings."""
    command = [sys.executable, __file__, "--run-one", rule, str(config)]
    for override in RULES[rule] + overrides:
        command += ["--set", override]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{rule} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    points = completed_points(folder, "frontq")
    best = front(points)
    slots = slot_usage(done.stdout, concurrency)
    return {"rule": rule, "hypervolume": hypervolume(best), "front_size": len(best),
            "cost_range": best[-1][0] / best[0][0] if best else 0.0, "wall_s": wall, "trials_s": slots.wall,
            "utilization": slots.utilization, "completed": len(points), "front": best}  # fmt: skip


def summarize(results: list[dict[str, Any]], rules: list[str]) -> list[list[str]]:
    """One row per rule: mean +- std over seeds, and ratios to `none` paired by seed."""
    rows = []
    for rule in rules:
        mine = [r for r in results if r["rule"] == rule]
        base = {r["seed"]: r for r in results if r["rule"] == "none"}
        row = [rule]
        for key in ("hypervolume", "front_size", "cost_range", "wall_s", "utilization"):
            values = [r[key] for r in mine]
            row.append(f"{statistics.mean(values):.3f} +- {_std(values):.3f}")
        for key in ("hypervolume", "wall_s"):
            ratios = [r[key] / base[r["seed"]][key] for r in mine if r["seed"] in base and base[r["seed"]][key] > 0]
            row.append(f"{statistics.mean(ratios):.2f} +- {_std(ratios):.2f}" if ratios else "-")
        rows.append(row)
    return rows


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def dataset_overrides(args: argparse.Namespace, scratch: Path) -> list[str]:
    """The data and schedule of the benchmark's search space."""
    common = [f"search.trials={args.trials}", f"search.concurrency={args.concurrency}", "name=frontq",
              f"space.epochs={args.epochs}"]  # fmt: skip
    if args.dataset == "digits":
        return common
    if not CIFAR_ARCHIVE.is_file():
        raise SystemExit(f"no CIFAR-10 archive at {CIFAR_ARCHIVE} (see ../shared/data/README.md)")
    target = scratch / "cifar10-jpg"
    with tarfile.open(CIFAR_ARCHIVE) as archive:
        archive.extractall(target, filter="data")
    return [*common, "data.name=imagefolder", f"data.data_dir={target}", f"data.train_subset={args.train_subset}",
            "data.val_fraction=0.02", "space.batch_size=[128]", "asha.grace_period=1"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "cifar"], default="digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=2000, help="CIFAR training images (stratified)")
    parser.add_argument("--rules", default="none,accuracy,pareto,moasha")
    parser.add_argument("--json", help="write every search's numbers to this file")
    parser.add_argument("--run-one", nargs=2, metavar=("RULE", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        return run_one(args.run_one[0], args.run_one[1], args.set)
    rules = args.rules.split(",")
    if "moasha" in rules and not _has_syne_tune():
        print("note: syne-tune is not installed (pip install -e '.[bench]'): skipping moasha", flush=True)
        rules.remove("moasha")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        overrides = dataset_overrides(args, Path(tmp))
        for seed in range(args.seeds):
            for rule in rules:
                folder = Path(tmp) / f"{rule}-{seed}"
                folder.mkdir()
                result = run_search(rule, ROOT / "configs" / "quickstart.yaml", [*overrides, f"search.seed={seed}"],
                                    folder, args.concurrency)  # fmt: skip
                results.append({**result, "seed": seed})
                print(f"seed {seed} {rule:8s}: hypervolume {result['hypervolume']:.3f}, front {result['front_size']}, "
                      f"{result['completed']} trained to the end, {result['wall_s']:.0f} s", flush=True)  # fmt: skip
    print(f"\n{args.dataset}: {args.trials} trials x {args.epochs} epochs, {args.concurrency} at a time, "
          f"{args.seeds} seeds; mean +- std over seeds; ratios paired by seed against `none`")  # fmt: skip
    headers = ["rule", "hypervolume", "front size", "MACs range", "wall s", "utilization", "HV / none", "wall / none"]
    print(format_table(headers, summarize(results, rules)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _has_syne_tune() -> bool:
    try:
        import syne_tune  # noqa: F401
    except ImportError:
        return False
    return True


def run_one(rule: str, config_path: str, overrides: list[str]) -> int:
    """One search in this process; for `moasha`, the driver's scheduler is Syne Tune's, behind an adapter."""
    from search.run import driver, launch
    from search.spec.parse import load_config

    config = load_config(config_path, overrides)
    if rule == "moasha":
        launch.early_stopping = _syne_tune_moasha  # type: ignore[assignment]
    return driver.run_search(config)


def _syne_tune_moasha(config: Any) -> Any:
    from moasha_adapter import SyneTuneMOASHA

    return SyneTuneMOASHA(config.objectives.cost, config.space.epochs, config.asha.grace_period,
                          config.asha.reduction_factor, config.search.seed)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
