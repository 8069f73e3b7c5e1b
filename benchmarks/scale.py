"""A search of many trivial trials: does the driver's cost per trial, its memory, Tune's state, the MLflow
database, `precrop pareto`, `precrop doctor` and the Optuna sampler grow with the number of trials?

Each trial is as small as a real one gets (4-class synthetic 16x16 images, CIFAR ResNet-20 widths, one
epoch), so the driver's and Tune's own work dominates. The search runs as users run it (`precrop search`,
MLflow and Optuna in SQLite files, ASHA off, 2 trials at a time). The cost per trial is read from the
progress lines: wall seconds per finished trial over the first and the last 100 trial ends (the
competitor is the same search's own start: trials are alike, so growth is the driver's and Tune's), and
the gap between a trial's end and the next start on the slot it freed (as in benchmarks/tune_overhead.py).
The Optuna part times `study.ask()` against the number of finished trials with the two samplers precrop
uses, on a study filled with random two-objective results.

    python benchmarks/scale.py --trials 1000      # the issue's size (tens of minutes on 2 cores)
    python benchmarks/scale.py --trials 100       # a quick check
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from precrop.textui import format_table

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\[\s*([0-9.]+) s\] (start|done )\s+([0-9a-f]+)", re.M)


def scale_config(trials: int, sampler: str) -> dict[str, object]:
    """The search: trivial trials, as many as asked."""
    return {
        "name": "scale",
        "model": {"arch": "cifar_resnet20"},
        "data": {"name": "synthetic"},
        "space": {
            "allocators": ["synexp", "uniform"],
            "budget": [0.15, 1.0],
            "lr": [0.01, 0.1],
            "weight_decay": [1.0e-4, 1.0e-3],
            "label_smoothing": [0.0, 0.1],
            "batch_size": [64],
            "epochs": 1,
        },
        "search": {"trials": trials, "concurrency": 2, "sampler": sampler, "seed": 0},
        "resources": {"cpu": 1},
        "asha": {"enabled": False},
    }


class RssSampler:
    """The resident size of one process, read from /proc every second while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples_mb: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.samples_mb.append(int(line.split()[1]) / 1024)
            except OSError:
                return

    def stop(self) -> list[float]:
        """Stop sampling; the samples in MiB."""
        self._stop.set()
        self._thread.join()
        return self.samples_mb


def seconds_per_trial(stdout: str, window: int) -> tuple[float, float]:
    """Wall seconds per finished trial over the first and the last `window` trial ends (from the progress
    lines): what a trial costs the search, its training included, early and late."""
    ends = sorted(float(seconds) for seconds, event, _ in LINE.findall(stdout) if event.strip() == "done")
    starts = [float(seconds) for seconds, event, _ in LINE.findall(stdout) if event == "start"]
    first = (ends[window - 1] - min(starts)) / window
    last = (ends[-1] - ends[-window - 1]) / window
    return first, last


def slot_gaps(stdout: str) -> list[float]:
    """For each trial start that reuses a freed slot, in order: seconds since that slot was freed."""
    events = sorted((float(seconds), event.strip()) for seconds, event, _ in LINE.findall(stdout))
    freed: list[float] = []
    gaps: list[float] = []
    for t, event in events:
        if event == "done":
            freed.append(t)
        elif freed:
            gaps.append(t - freed.pop(0))
    return gaps


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `command`; its wall seconds and result."""
    began = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - began, done


def optuna_ask_ms(finished: int, sampler_name: str) -> float:
    """Milliseconds of one `study.ask()` (median of 5) after `finished` random two-objective trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.NSGAIISampler(seed=0, population_size=4) if sampler_name == "nsga2"
               else optuna.samplers.TPESampler(seed=0, n_startup_trials=10))  # fmt: skip
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        "budget": optuna.distributions.FloatDistribution(0.15, 1.0),
        "lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True),
    }
    rng = random.Random(0)
    for _ in range(finished):
        params = {"budget": rng.uniform(0.15, 1.0), "lr": 10 ** rng.uniform(-2, -1)}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  values=[rng.random(), params["budget"]]))  # fmt: skip
    times = []
    for _ in range(5):
        began = time.perf_counter()
        trial = study.ask(distributions)
        times.append((time.perf_counter() - began) * 1000)
        study.tell(trial, [rng.random(), trial.params["budget"]])
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2"])
    args = parser.parse_args()
    window = max(1, min(100, args.trials // 4))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "scale.yaml").write_text(yaml.safe_dump(scale_config(args.trials, args.sampler)))
        began = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "search.cli", "search", "scale.yaml"], cwd=folder, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        rss = RssSampler(process.pid)
        stdout, stderr = process.communicate()
        search_s = time.perf_counter() - began
        rss_mb = rss.stop()
        if process.returncode != 0:
            print(stdout[-3000:], stderr[-3000:], sep="\n")
            return 1
        gaps = slot_gaps(stdout)
        states = sorted(folder.glob("ray_results/*/experiment_state-*.json"))
        state_kb = states[-1].stat().st_size / 1024 if states else float("nan")
        database_mb = (folder / "mlflow.db").stat().st_size / 2**20
        pareto_s, pareto = timed([sys.executable, "-m", "search.cli", "pareto", "--experiment", "scale", "--json"],
                                 folder, env)  # fmt: skip
        doctor_s, _ = timed([sys.executable, "-m", "search.cli", "doctor"], folder, env)
        help_s, _ = timed([sys.executable, "-m", "search.cli", "pareto", "--help"], folder, env)
    assert pareto.returncode == 0, pareto.stderr
    first, last = seconds_per_trial(stdout, window)
    print(f"{args.trials} trivial trials, 2 at a time, sampler {args.sampler}: the search took {search_s:.0f} s")
    rows = [
        [f"search seconds per trial, first {window} trial ends", f"{first:.2f} s", ""],
        [f"search seconds per trial, last {window} trial ends", f"{last:.2f} s", f"{last / first:.2f}x the first"],
        [
            f"slot gap (end -> next start), median first / last {window}",
            f"{statistics.median(gaps[:window]):.2f} / {statistics.median(gaps[-window:]):.2f} s",
            "0.1 s resolution",
        ],
        ["driver RSS: first sample / last / max", f"{rss_mb[0]:.0f} / {rss_mb[-1]:.0f} / {max(rss_mb):.0f} MiB", ""],
        ["Tune experiment state (newest file)", f"{state_kb:.0f} KiB", ""],
        ["MLflow database", f"{database_mb:.1f} MiB", ""],
        ["`precrop pareto --json`", f"{pareto_s:.1f} s", f"{pareto_s / help_s:.1f}x `precrop pareto --help`"],
        ["`precrop doctor`", f"{doctor_s:.1f} s", f"{doctor_s / help_s:.1f}x `precrop pareto --help`"],
    ]
    for sampler in ("tpe", "nsga2"):
        small, large = optuna_ask_ms(min(100, args.trials), sampler), optuna_ask_ms(args.trials, sampler)
        rows.append([f"Optuna {sampler} ask() after {min(100, args.trials)} / {args.trials} trials",
                     f"{small:.1f} / {large:.1f} ms", f"{large / small:.1f}x"])  # fmt: skip
    print(format_table(["what", "measured", "against"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
