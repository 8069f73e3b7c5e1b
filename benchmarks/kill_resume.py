"""Kill-and-resume robustness: SIGKILL the quickstart search at N moments spread over its run, `--resume`,
and count what is wrong afterwards (issue 19's measurement, redone on this code).

Each kill starts the search in a fresh folder, waits a set delay (spread evenly from --first-s to --last-s,
so the kills land before the parent run, mid-trial, between trials and near the end), then SIGKILLs the
driver's process group, as `kill -9 -PGID` does. After the killed driver's watchdog has exited it counts
the Ray processes of the killed driver still alive, then runs `--resume` and checks the search as a user
would: exit code, trials in Tune's state, child runs in MLflow (one per trial), runs left RUNNING, the
parent's status, metric steps logged twice, and Ray processes the resumed search left.

    python benchmarks/kill_resume.py --kills 30          # about 30-40 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no type information shipped
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.infra.processes import list_processes, processes_of_ray_started_by  # noqa: E402


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": str(ROOT)}  # fmt: skip


def _config(trials: int) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config = copy.deepcopy(config)
    config["search"]["trials"] = trials
    return config


def _ray_left(driver: int) -> int:
    """Ray processes of a Ray `driver` started that are alive once its watchdog has exited."""
    watchdogs = [p for p in psutil.process_iter(["cmdline"])
                 if (p.info["cmdline"] or [])[-2:] == ["search.run.reaper", str(driver)]]  # fmt: skip
    psutil.wait_procs(watchdogs, timeout=120)
    alive = 0
    for proc in processes_of_ray_started_by(list_processes(), driver):
        with contextlib.suppress(psutil.NoSuchProcess):
            alive += psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
    return alive


def _check(folder: Path, name: str) -> dict[str, Any]:
    """What the resumed search left in Tune's state and MLflow."""
    from mlflow import MlflowClient
    from ray.tune import ExperimentAnalysis

    searches = sorted(folder.glob(f"ray_results/{name}-*"))
    trials = len(ExperimentAnalysis(str(searches[-1])).trials) if searches else 0
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    children = [r for r in runs if r.data.tags.get("precrop.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("precrop.role") == "search"]
    twice = 0
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        twice += len(steps) != len(set(steps))
    return {
        "trials": trials,
        "child runs": len(children),
        "trial ids": len({r.data.tags.get("precrop.trial_id") for r in children}),
        "RUNNING": sum(r.info.status == "RUNNING" for r in runs),
        "parent": ",".join(sorted(r.info.status for r in parents)) or "none",
        "epochs twice": twice,
    }


def one_kill(folder: Path, delay_s: float, trials: int) -> dict[str, Any]:
    """Kill the search `delay_s` after it starts, resume it, and report what is wrong."""
    config = _config(trials)
    (folder / "search.yaml").write_text(yaml.safe_dump(config))
    (folder / "search.py").write_text((ROOT / "search.py").read_text())
    driver = subprocess.Popen([sys.executable, "search.py", "search.yaml"], cwd=folder, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    time.sleep(delay_s)
    ended_first = driver.poll() is not None
    if not ended_first:
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    left_by_kill = _ray_left(driver.pid)
    resumed = subprocess.Popen([sys.executable, "search.py", "search.yaml", "--resume"], cwd=folder, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    output, _ = resumed.communicate(timeout=900)
    row = {"kill at s": round(delay_s, 1), "ended first": ended_first, "resume exit": resumed.returncode,
           "Ray left by kill": left_by_kill}  # fmt: skip
    row.update(_check(folder, config["name"]))
    row["Ray left by resume"] = _ray_left(resumed.pid)
    row["traceback"] = "Traceback" in output
    return row


def _bad(row: dict[str, Any], trials: int) -> list[str]:
    """What is wrong in a row (empty: the search ended as if never killed)."""
    wrong = []
    if row["resume exit"] != 0 or row["traceback"]:
        wrong.append("resume failed")
    if not row["trials"] == row["child runs"] == row["trial ids"] == trials:
        wrong.append("trial count")
    if row["RUNNING"]:
        wrong.append("RUNNING left")
    if row["parent"] != "FINISHED":
        wrong.append("parent")
    if row["epochs twice"]:
        wrong.append("epoch logged twice")
    if row["Ray left by kill"] or row["Ray left by resume"]:
        wrong.append("Ray left")
    return wrong


def main() -> int:
    """Run the kills and print one row per kill, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--first-s", type=float, default=1.0, help="delay of the first kill after the start")
    parser.add_argument("--last-s", type=float, default=40.0, help="delay of the last kill")
    args = parser.parse_args()
    step = (args.last_s - args.first_s) / max(args.kills - 1, 1)
    rows = []
    columns = ["kill at s", "ended first", "resume exit", "trials", "child runs", "trial ids", "RUNNING", "parent",
               "epochs twice", "Ray left by kill", "Ray left by resume", "wrong"]  # fmt: skip
    print(" | ".join(columns), flush=True)
    started = time.perf_counter()
    for i in range(args.kills):
        with tempfile.TemporaryDirectory(prefix="kill-resume-") as folder:
            row = one_kill(Path(folder), args.first_s + i * step, args.trials)
        row["wrong"] = ",".join(_bad(row, args.trials)) or "-"
        rows.append(row)
        print(" | ".join(str(row[c]) for c in columns), flush=True)
    wrong = Counter(w for row in rows for w in row["wrong"].split(",") if w != "-")
    ok = sum(row["wrong"] == "-" for row in rows)
    print(f"\n{ok}/{len(rows)} kills resumed to a search as if never killed "
          f"({sum(r['ended first'] for r in rows)} searches ended before their kill); "
          f"{time.perf_counter() - started:.0f} s in all", flush=True)  # fmt: skip
    for what, count in wrong.most_common():
        print(f"  {what}: {count}")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
