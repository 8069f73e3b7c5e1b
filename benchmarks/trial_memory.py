"""Does a process that trains one plan after another grow? The memory of reused trial processes, before and
after trainers/memory.py, measured in the same run.

Part 1, one process, no Ray (`--trials N`): MobileNetV2 (CIFAR) plans one after another, as a reused trial
process runs them: allocate (synexp and uniform in turn, budgets 0.25-0.7), build, time the latency, train
one epoch. Each arm runs in a fresh process:
  - `before`: what the code did until issue 27: the first latency timing raised glibc's mmap and trim
    thresholds to 1 GiB for good, and nothing gave freed memory back;
  - `now`: the product code: thresholds raised only while timing, the last trial's memory released first.
It prints the resident size at each trial's start (what the previous trials left) and its peak.

Part 2 (`--search`): issue 27's search, a 6-trial, 1-epoch search of mobilenetv2_cifar (allocators synexp,
uniform, synflow, erk; one trial at a time) on `--train-subset` CIFAR JPEGs (else synthetic 32 px images),
once per arm, sampling the resident size of the driver and of every Ray worker every half second.

    python benchmarks/trial_memory.py --trials 8
    python benchmarks/trial_memory.py --trials 0 --search --data-dir data/cifar10-jpg --train-subset 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("before", "now")
BUDGETS = (0.3, 0.5, 0.7, 0.4, 0.6, 0.35, 0.45, 0.55, 0.65, 0.25)

# Loaded first by every Python process of an arm (the driver, Ray's workers): for `before`, it puts back the
# old behaviour in trainers.memory before anything imports its names.
SITECUSTOMIZE = '''
import os
if os.environ.get("PRECROP_BENCH_ARM") == "before":
    import contextlib
    import trainers.memory as memory

    @contextlib.contextmanager
    def kept_for_good():
        yield memory._set_thresholds(memory.KEEP_THRESHOLD, memory.KEEP_THRESHOLD)

    memory.freed_memory_kept = kept_for_good
    memory.release_freed_memory = lambda: False
'''


def one_process(trials: int) -> list[tuple[float, float]]:
    """Run `trials` trials in this process; (RSS at start, peak) of each, in MiB."""
    import torch

    from precrop.methods.registry import realize
    from precrop.nn.build import build_from_plan, layer_table
    from precrop.width.allocate import AllocationRequest
    from search.run.latency import time_models
    from trainers import memory
    from trainers.datasets import DataRequest
    from trainers.load import load_dataset
    from trainers.loop import Trainer
    from trainers.recipe import TrainConfig

    torch.set_num_threads(1)
    data = load_dataset(DataRequest("synthetic", image_size=32))
    table = layer_table("mobilenetv2_cifar", data.num_classes, 32)

    def trial(i: int) -> None:
        request = AllocationRequest(macs=BUDGETS[i % len(BUDGETS)])
        plan = realize("uniform" if i % 2 else "synexp", table, request, None).plan
        model = build_from_plan(plan, seed=i)
        time_models([model], [plan.input_shape], 32, rounds=1)
        Trainer(model, data, TrainConfig(epochs=1, batch_size=128, device="cpu", workers=0)).run()

    rows = []
    for i in range(trials):
        memory.release_freed_memory()  # as search/run/trial.py does first (a no-op in the `before` arm)
        memory.reset_peak_rss()
        start = memory.rss_mb() or 0.0
        trial(i)
        rows.append((start, memory.peak_rss_mb() or 0.0))
    return rows


@contextlib.contextmanager
def arm_environment(arm: str) -> Iterator[dict[str, str]]:
    """The environment of one arm: this checkout and the sitecustomize above first on PYTHONPATH."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = {**os.environ, "PRECROP_BENCH_ARM": arm, "PYTHONPATH": f"{folder}:{ROOT}",
               "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
        yield env


def run_one_process_arms(trials: int) -> dict[str, list[tuple[float, float]]]:
    """Part 1, each arm in a fresh process."""
    results = {}
    for arm in ARMS:
        with arm_environment(arm) as env:
            out = subprocess.run([sys.executable, __file__, "--child", str(trials)], env=env, capture_output=True,
                                 text=True, check=True)  # fmt: skip
        results[arm] = [tuple(row) for row in json.loads(out.stdout.splitlines()[-1])]
        print(f"  {arm}: done", flush=True)
    return results  # type: ignore[return-value]


def search_config(data_dir: str | None, subset: int) -> dict[str, object]:
    """Issue 27's 6-trial search."""
    data: dict[str, object] = {"name": "synthetic", "image_size": 32}
    if data_dir:
        data = {"name": "imagefolder", "data_dir": str(Path(data_dir).resolve()), "train_subset": subset}
    return {
        "name": "memory", "model": {"arch": "mobilenetv2_cifar"}, "data": data,
        "space": {"allocators": ["synexp", "uniform", "synflow", "erk"], "budget": [0.3, 0.5], "epochs": 1,
                  "batch_size": [128], "lr": [0.1, 0.1], "weight_decay": [5e-4, 5e-4], "label_smoothing": [0, 0]},
        "search": {"trials": 6, "concurrency": 1, "seed": 0}, "resources": {"cpu": 2}, "asha": {"enabled": False},
    }  # fmt: skip


def run_search_arm(arm: str, config: dict[str, object]) -> dict[str, float]:
    """Part 2 for one arm: peak RSS of the driver and of the largest Ray worker, and the trials' start RSS."""
    import psutil  # type: ignore[import-untyped]  # no type information shipped
    import yaml

    with tempfile.TemporaryDirectory() as folder, arm_environment(arm) as env:
        path = Path(folder, "config.yaml")
        path.write_text(yaml.safe_dump(config))
        driver = subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(path)], cwd=folder, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        peak_driver = peak_worker = 0.0
        handle = psutil.Process(driver.pid)
        while driver.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak_driver = max(peak_driver, handle.memory_info().rss / 2**20)
                for child in handle.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "ImplicitFunc" in " ".join(child.cmdline()) or "run_trial" in child.name():
                            peak_worker = max(peak_worker, child.memory_info().rss / 2**20)
            time.sleep(0.5)
        starts = trial_starts(Path(folder) / "mlflow.db")
    nan = float("nan")
    return {"exit": float(driver.returncode), "driver_peak": peak_driver, "worker_peak": peak_worker,
            "start_first": starts[0] if starts else nan, "start_last": starts[-1] if starts else nan}  # fmt: skip


def trial_starts(store: Path) -> list[float]:
    """worker_rss_start_mb of each trial run, in start order."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("memory")
    if experiment is None:
        return []
    runs = sorted(client.search_runs([experiment.experiment_id]), key=lambda run: run.info.start_time)
    return [run.data.metrics["worker_rss_start_mb"] for run in runs if "worker_rss_start_mb" in run.data.metrics]


def main() -> None:
    """Parse the flags, run the parts asked for, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="part 1: trials in one process (0: skip)")
    parser.add_argument("--search", action="store_true", help="part 2: the 6-trial search, per arm")
    parser.add_argument("--data-dir", help="part 2: the CIFAR-10 JPEG copy (ImageFolder); default synthetic")
    parser.add_argument("--train-subset", type=int, default=500)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_process(args.child)))
        return
    if args.trials:
        print(f"part 1: {args.trials} MobileNetV2 trials in one process (1 thread, synthetic 32 px, 1 epoch)")
        results = run_one_process_arms(args.trials)
        print("trial  RSS at start: before  now    ratio   peak: before  now")
        pairs = zip(results["before"], results["now"], strict=True)
        for i, ((b_start, b_peak), (n_start, n_peak)) in enumerate(pairs):
            print(f"{i + 1:>5}  {b_start:>18.0f}  {n_start:>5.0f}  {b_start / n_start:>6.2f}   {b_peak:>11.0f}  "
                  f"{n_peak:>5.0f}")
    if args.search:
        config = search_config(args.data_dir, args.train_subset)
        print(f"part 2: issue 27's 6-trial search ({'CIFAR JPEG subset' if args.data_dir else 'synthetic'})")
        rows = {arm: run_search_arm(arm, config) for arm in ARMS}
        print("arm     exit  driver peak MiB  trial process peak MiB  trial start RSS: first  last")
        for arm, row in rows.items():
            print(f"{arm:<7} {row['exit']:>4.0f}  {row['driver_peak']:>15.0f}  {row['worker_peak']:>22.0f}  "
                  f"{row['start_first']:>21.0f}  {row['start_last']:>5.0f}")


if __name__ == "__main__":
    main()
