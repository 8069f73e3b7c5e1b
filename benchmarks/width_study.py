"""A training study of width allocations without Ray or MLflow: arms x budgets x schedules x seeds.

Issue 27's evidence: does SynExp's allocation (objective `layer` or `path`) train better than uniform
scaling and SynFlow at equal counted cost, at several schedule lengths, and which family of channel
groups (residual streams, expansions, head) costs accuracy (benchmarks/study_arms.py)? It runs where
`precrop study` cannot (the GPU machine has no Ray or MLflow) and on the 2-core box, with every cell
trained by trainers/ with the same recipe; only the plan differs. Cells run in `--jobs` worker processes
(each reused, several sharing one GPU), are appended to OUT/cells.jsonl as they finish, and a rerun with
the same OUT skips the cells already there (kill it any time). The tables (OUT/study.md), the paired
differences to `--reference` (OUT/paired.csv) and the accuracy-vs-schedule plot (OUT/study.png) are
remade from cells.jsonl at the end, or alone with --report.

    python benchmarks/width_study.py --data-dir data/cifar10-jpg --out runs/mbv2 \\
        --arms layer,path,uniform,synflow --budgets 0.3,0.5 --epochs 4,10 --seeds 3 --train-subset 5000
    python benchmarks/width_study.py --out runs/mbv2 --report
    python benchmarks/width_study.py --tiny --out /tmp/tiny       # synthetic data, one epoch: a smoke test

Recipe (docs/results.md): SGD + Nesterov, lr 0.1, 0.5 warm-up epochs then cosine, weight decay 5e-4
(not on BN/bias), batch 128, no label smoothing, random crop + flip. A seed fixes the data split and
subset, the initialization, the data order and the masks, so arms of one seed form a pair.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from study_arms import FAMILIES, ablation_arm, parse_arm  # noqa: E402

from precrop.errors import UserError  # noqa: E402
from search.results.outputs import to_markdown  # noqa: E402  (stdlib only)
from search.studies.stats import PairedDifference, paired_difference  # noqa: E402  (stdlib + scipy: no Ray, no MLflow)

CELLS_FILE = "cells.jsonl"
PLANS_DIR = "plans"


@dataclass(frozen=True)
class Cell:
    """One training run: an arm's plan at a budget, trained for `epochs` with `seed`."""

    arm: str
    budget: float
    epochs: int
    seed: int

    @property
    def key(self) -> str:
        """Identity in cells.jsonl."""
        return f"{self.arm}|{self.budget:g}|{self.epochs}|{self.seed}"


@dataclass(frozen=True)
class Setup:
    """What every cell shares: model, data, cost metric, device and the plan folder."""

    arch: str
    metric: str
    data: str  # "imagefolder" or "synthetic"
    data_dir: str | None
    train_subset: int | None
    val_fraction: float
    test_subset: int | None
    device: str
    threads: int
    plans_dir: str
    num_classes: int = 10
    image_size: int = 32


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="study folder: cells.jsonl, plans/, study.md, paired.csv, study.png")
    p.add_argument("--arch", default="mobilenetv2_cifar")
    p.add_argument("--metric", default="macs", choices=("macs", "params"))
    p.add_argument("--arms", default="layer,path,uniform,synflow", help="comma list (see benchmarks/study_arms.py)")
    p.add_argument(
        "--ablate",
        default="",
        help="SynExp arm whose families move to uniform one at a time (adds "
        f"BASE:uniform-{{{','.join(FAMILIES)}}} arms) at --ablation-budgets",
    )
    p.add_argument("--ablation-budgets", default="", help="budgets of the ablation arms [the first budget]")
    p.add_argument("--ablation-epochs", default="", help="schedules of the ablation arms [the longest]")
    p.add_argument("--budgets", default="0.3,0.5")
    p.add_argument("--epochs", default="4", help="comma list of schedule lengths; each is its own cosine schedule")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reference", default="uniform", help="the arm every other arm is paired with")
    p.add_argument("--data-dir", help="the CIFAR-10 JPEG copy (ImageFolder: train/, test/)")
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--val-fraction", type=float, default=0.02, help="of train, carved before the subset")
    p.add_argument("--test-subset", type=int, help="score on this many test images (stratified) [all]")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (they share the GPU on cuda)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--threads", type=int, help="torch threads per worker [cores / jobs]")
    p.add_argument("--report", action="store_true", help="only remake the tables and plot from cells.jsonl")
    p.add_argument(
        "--plans-only",
        action="store_true",
        help="only allocate the channel plans into OUT/plans (for "
        "a machine without cvxpy: copy them into its OUT/plans)",
    )
    p.add_argument("--tiny", action="store_true", help="smoke test: synthetic 32 px data, 256 images, 1 epoch")
    return p.parse_args(argv)


def floats(text: str) -> list[float]:
    """'0.3,0.5' -> [0.3, 0.5]."""
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    """'4,10' -> [4, 10]."""
    return [int(x) for x in text.split(",") if x.strip()]


def grid(args: argparse.Namespace) -> list[Cell]:
    """Every cell, shortest schedules first and seed by seed, so an interrupted study holds whole pairs."""
    budgets, epochs, seeds = floats(args.budgets), ints(args.epochs), range(args.seeds)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm in arms:
        parse_arm(arm)
    cells = [Cell(a, b, e, s) for e in epochs for s in seeds for b in budgets for a in arms]
    if args.ablate:
        ab_budgets = floats(args.ablation_budgets) or budgets[:1]
        ab_epochs = ints(args.ablation_epochs) or [max(epochs)]
        extra = [ablation_arm(args.ablate, f) for f in FAMILIES]
        for arm in extra:
            parse_arm(arm)
        needed = [args.ablate, args.reference]
        cells += [Cell(a, b, e, s) for e in ab_epochs for s in seeds for b in ab_budgets for a in [*needed, *extra]]
    unique = dict.fromkeys(cells)
    return sorted(unique, key=lambda c: (c.epochs, c.seed, c.budget))


def read_cells(out: Path) -> list[dict[str, Any]]:
    """The finished cells of a study folder (the last record of a key wins)."""
    path = out / CELLS_FILE
    if not path.exists():
        return []
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["key"]] = row
    return list(rows.values())


# ---------------------------------------------------------------------------------------------- workers
_DATA_CACHE: dict[int, Any] = {}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _dataset(setup: Setup, seed: int) -> Any:
    """The seed's data (split and subset depend on the seed); one entry kept per worker."""
    from trainers.datasets import DataRequest
    from trainers.load import load_dataset

    if seed not in _DATA_CACHE:
        _DATA_CACHE.clear()
        files = setup.data == "imagefolder"  # resident files must keep their own size
        request = DataRequest(setup.data, data_dir=setup.data_dir, val_fraction=setup.val_fraction, seed=seed,
                              with_test=True, resident="yes" if files else "auto", train_subset=setup.train_subset,
                              image_size=None if files else setup.image_size)  # fmt: skip
        data = load_dataset(request)
        if setup.test_subset is not None and data.test is not None and setup.test_subset < len(data.test):
            from dataclasses import replace

            from trainers.datasets import split_labels, stratified_split

            _, kept = stratified_split(split_labels(data.test), setup.test_subset / len(data.test), 12345)
            data = replace(data, test=data.test.subset(kept))
        _DATA_CACHE[seed] = data
    return _DATA_CACHE[seed]


def _model(setup: Setup, cell: Cell, data: Any) -> tuple[Any, Any]:
    """(plan, model) of a cell: the stored channel plan, or the seeded dense model with its masks."""
    from study_arms import request_for

    from precrop.methods.base import Probe
    from precrop.methods.masks import apply_masks
    from precrop.methods.registry import realize
    from precrop.nn.build import build_from_plan, layer_table
    from precrop.width.allocate import dense_plan
    from precrop.width.plan import read_plan_file

    base, _ = parse_arm(cell.arm)
    plan_file = Path(setup.plans_dir) / plan_name(cell.arm, cell.budget)
    if plan_file.exists():
        plan = read_plan_file(plan_file)
        return plan, build_from_plan(plan, seed=cell.seed)
    table = layer_table(setup.arch, data.num_classes, data.image_shape[1])
    dense = build_from_plan(dense_plan(table), seed=cell.seed)
    result = realize(base, table, request_for(cell.arm, setup.metric, cell.budget), Probe(dense, (), cell.seed))
    apply_masks(dense, result.masks)
    return result.plan, dense


def run_cell(setup: Setup, cell: Cell) -> dict[str, Any]:
    """Train one cell and return its record (accuracies, cost, time, the per-epoch history)."""
    from trainers.loop import Trainer, evaluate
    from trainers.recipe import TrainConfig

    started = time.perf_counter()
    data = _dataset(setup, cell.seed)
    plan, model = _model(setup, cell, data)
    config = TrainConfig(epochs=cell.epochs, batch_size=128, lr=0.1, weight_decay=5e-4, label_smoothing=0.0,
                         warmup_epochs=min(0.5, cell.epochs), seed=cell.seed, device=setup.device,
                         workers=0)  # fmt: skip
    trainer = Trainer(model, data, config)
    trained = time.perf_counter()
    result = trainer.run()
    train_s = time.perf_counter() - trained
    record: dict[str, Any] = {**asdict(cell), "key": cell.key, "status": result.status, "reason": result.reason,
                              "macs_frac": plan.effective.macs / plan.base.macs,
                              "params_frac": plan.effective.params / plan.base.params,
                              "train_images": len(data.train), "train_s": train_s, "device": str(trainer.device),
                              "history": [{k: float(v) for k, v in h.items()} for h in result.history]}  # fmt: skip
    if result.status == "completed":
        test = evaluate(trainer.model, trainer.batches(data.test, config.eval_batch_size), config.amp)
        record.update(test_acc=float(test["accuracy"]), test_images=len(data.test),
                      val_acc=float(result.history[-1]["val_acc"]))  # fmt: skip
    record["wall_s"] = time.perf_counter() - started
    return record


def plan_name(arm: str, budget: float) -> str:
    """File name of an arm's stored plan."""
    return f"{arm.replace(':', '__')}_{budget:g}.json"


def write_plans(setup: Setup, cells: Iterable[Cell]) -> None:
    """Allocate every channel arm's plan once, in the driver; mask arms are made where they train."""
    from study_arms import channel_plan, method_is_mask

    from precrop.nn.build import layer_table

    table = layer_table(setup.arch, setup.num_classes, setup.image_size)
    folder = Path(setup.plans_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for arm, budget in dict.fromkeys((c.arm, c.budget) for c in cells):
        if method_is_mask(parse_arm(arm)[0]):
            continue
        path = folder / plan_name(arm, budget)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(channel_plan(table, arm, setup.metric, budget).to_json())
            tmp.replace(path)


# ---------------------------------------------------------------------------------------------- report
def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}"


def result_tables(rows: Sequence[dict[str, Any]], reference: str) -> str:
    """Markdown: per schedule and budget, each arm's cost and accuracy, then the paired differences."""
    done = [r for r in rows if r.get("test_acc") is not None]
    parts = []
    header = ["arm", "budget", "epochs", "MACs frac", "params frac", "seeds", "val acc", "test acc",
              "train img/s"]  # fmt: skip
    table = []
    for epochs, budget, arm in sorted({(r["epochs"], r["budget"], r["arm"]) for r in done}):
        mine = [r for r in done if (r["epochs"], r["budget"], r["arm"]) == (epochs, budget, arm)]
        speed = statistics.fmean(r["train_images"] * r["epochs"] / r["train_s"] for r in mine)
        table.append([arm, f"{budget:g}", epochs, f"{mine[0]['macs_frac']:.3f}", f"{mine[0]['params_frac']:.3f}",
                      len(mine), _mean_std([r["val_acc"] for r in mine]), _mean_std([r["test_acc"] for r in mine]),
                      f"{speed:,.0f}"])  # fmt: skip
    parts.append(to_markdown(header, table))
    paired_header = ["arm", "budget", "epochs", "n pairs", f"test acc - {reference}", "95% CI", "per seed"]
    paired = []
    for epochs, budget, arm, diff, seeds in paired_differences(done, reference):
        stat = interval(diff)
        ci = "n/a" if stat.low is None else f"[{stat.low:+.4f}, {stat.high:+.4f}]"
        per_seed = " ".join(f"s{s}:{d:+.3f}" for s, d in zip(seeds, diff, strict=True))
        paired.append([arm, f"{budget:g}", epochs, stat.n, f"{stat.mean:+.4f}", ci, per_seed])
    parts.append(f"Paired by seed, test accuracy minus `{reference}`'s, mean and 95% Student t interval:\n")
    parts.append(to_markdown(paired_header, paired))
    return "\n\n".join(parts) + "\n"


def interval(differences: Sequence[float]) -> PairedDifference:
    """Mean and 95% t interval of paired differences; the mean alone where scipy is missing (the GPU machine:
    remake the report with --report where it is installed)."""
    try:
        return paired_difference(differences)
    except ImportError:
        return PairedDifference(len(differences), statistics.fmean(differences), None, None)


def paired_differences(
    done: Sequence[dict[str, Any]], reference: str
) -> list[tuple[int, float, str, list[float], list[int]]]:
    """(epochs, budget, arm, test-accuracy differences to the reference by seed, those seeds)."""
    found = []
    by_key = {(r["arm"], r["budget"], r["epochs"], r["seed"]): r["test_acc"] for r in done}
    for epochs, budget, arm in sorted({(r["epochs"], r["budget"], r["arm"]) for r in done}):
        if arm == reference:
            continue
        seeds = sorted(s for (a, b, e, s) in by_key if (a, b, e) == (arm, budget, epochs)
                       and (reference, budget, epochs, s) in by_key)  # fmt: skip
        if seeds:
            diffs = [by_key[(arm, budget, epochs, s)] - by_key[(reference, budget, epochs, s)] for s in seeds]
            found.append((epochs, budget, arm, diffs, seeds))
    return found


def paired_csv(rows: Sequence[dict[str, Any]], reference: str) -> str:
    """The paired differences as numbers."""
    lines = ["arm,reference,budget,epochs,pairs,mean_diff,ci_low,ci_high"]
    done = [r for r in rows if r.get("test_acc") is not None]
    for epochs, budget, arm, diff, _ in paired_differences(done, reference):
        stat = interval(diff)
        low, high = ("", "") if stat.low is None else (f"{stat.low:.6f}", f"{stat.high:.6f}")
        lines.append(f"{arm},{reference},{budget:g},{epochs},{stat.n},{stat.mean:.6f},{low},{high}")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Test accuracy against schedule length, one panel per budget, mean +- std per arm; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    done = [r for r in rows if r.get("test_acc") is not None]
    budgets = sorted({r["budget"] for r in done})
    if not budgets:
        return False
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        for arm in sorted({r["arm"] for r in done if r["budget"] == budget}):
            points = sorted({r["epochs"] for r in done if (r["arm"], r["budget"]) == (arm, budget)})
            accs = [[r["test_acc"] for r in done if (r["arm"], r["budget"], r["epochs"]) == (arm, budget, e)]
                    for e in points]  # fmt: skip
            mean = [statistics.fmean(a) for a in accs]
            std = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in accs]
            ax.errorbar(points, mean, yerr=std, marker="o", capsize=3, label=arm)
        ax.set(title=f"{rows[0].get('metric', 'budget')} {budget:g}", xlabel="epochs (each its own schedule)",
               ylabel="test accuracy")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(out: Path, reference: str) -> str:
    """study.md, paired.csv and study.png from cells.jsonl; the markdown text."""
    rows = read_cells(out)
    text = result_tables(rows, reference)
    failed = [r for r in rows if r.get("status") != "completed"]
    if failed:
        text += "\nNot completed: " + ", ".join(f"{r['key']} ({r.get('reason')})" for r in failed) + "\n"
    (out / "study.md").write_text(text)
    (out / "paired.csv").write_text(paired_csv(rows, reference))
    plot(rows, out / "study.png")
    return text


# ---------------------------------------------------------------------------------------------- driver
def setup_of(args: argparse.Namespace, out: Path) -> Setup:
    """The shared setup the flags describe (--tiny: synthetic data, 256 images)."""
    jobs = max(args.jobs, 1)
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    if args.tiny:
        return Setup(args.arch, args.metric, "synthetic", None, None, 0.1, None, args.device, threads,
                     str(out / PLANS_DIR), num_classes=4)  # fmt: skip
    if not args.plans_only and (not args.data_dir or not Path(args.data_dir).is_dir()):
        raise UserError(f"--data-dir {args.data_dir!r} is not a folder (the CIFAR-10 JPEG copy: train/, test/)")
    return Setup(args.arch, args.metric, "imagefolder", args.data_dir, args.train_subset, args.val_fraction,
                 args.test_subset, args.device, threads, str(out / PLANS_DIR))  # fmt: skip


def run_study(args: argparse.Namespace) -> int:
    """Train every cell not in OUT/cells.jsonl yet, `--jobs` at a time, then write the report."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        args.epochs, args.seeds, args.budgets = "1", min(args.seeds, 2), "0.3"
    cells = grid(args)
    setup = setup_of(args, out)
    done = {r["key"] for r in read_cells(out) if r.get("status") == "completed"}
    todo = [c for c in cells if c.key not in done]
    write_plans(setup, cells)
    if args.plans_only:
        print(f"plans of {len({(c.arm, c.budget) for c in cells})} arm/budget pairs in {setup.plans_dir}")
        return 0
    print(f"{len(cells)} cells, {len(cells) - len(todo)} completed in {out / CELLS_FILE}; {len(todo)} to train on "
          f"{setup.device} in {args.jobs} worker(s) x {setup.threads} thread(s)", flush=True)  # fmt: skip
    pool = ProcessPoolExecutor(max(args.jobs, 1), mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(setup.threads,))  # fmt: skip
    try:
        train_cells(pool, setup, todo, out)
    except KeyboardInterrupt:  # Ctrl-C or `timeout -s INT`: keep what finished, report it, stop the workers
        print("interrupted: the cells that finished are kept; rerun the same command to go on", flush=True)
        for process in list(getattr(pool, "_processes", {}).values()):  # no public way to stop busy workers
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        print(write_report(out, args.reference))
        return 130
    pool.shutdown()
    print(write_report(out, args.reference))
    return 0


def train_cells(pool: ProcessPoolExecutor, setup: Setup, todo: Sequence[Cell], out: Path) -> None:
    """Train `todo` in `pool`, appending each record to OUT/cells.jsonl as it finishes (a failure is recorded
    as a failed cell and the study goes on)."""
    started = time.perf_counter()
    pending: dict[Future[dict[str, Any]], Cell] = {pool.submit(run_cell, setup, c): c for c in todo}
    finished = 0
    with (out / CELLS_FILE).open("a") as sink:
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                cell = pending.pop(future)
                finished += 1
                try:
                    record = future.result()
                except Exception as exc:
                    record = {
                        **asdict(cell),
                        "key": cell.key,
                        "status": "failed",
                        "reason": f"{type(exc).__name__}: {exc}",
                    }
                record["metric"] = setup.metric
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                acc = f"test {record['test_acc']:.2%}" if "test_acc" in record else record["status"]
                print(
                    f"[{finished}/{len(todo)} {time.perf_counter() - started:6.0f} s] {cell.arm} {cell.budget:g} "
                    f"{cell.epochs} ep seed {cell.seed}: {acc} ({record.get('wall_s', math.nan):.0f} s)",
                    flush=True,
                )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, or only its report."""
    args = parse_args(argv)
    try:
        if args.report:
            print(write_report(Path(args.out), args.reference))
            return 0
        return run_study(args)
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
