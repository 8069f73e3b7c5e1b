"""Studies: fixed grids of trials that check the method's claims, run and logged exactly like a search.

- `granularity`: SynExp's density vector at one budget, realized three ways on the same architecture:
  random weight masks (`synexp_weight`), random whole-filter masks (`synexp_filter`) and channel
  widths (`synexp`, PreCrop). The paper's claim is that SynExp does not depend on the granularity.
- `mapping`: the three channel-mapping variants of SynExp (`fit`, `gp`, `internal`) at the same budgets.
- `baselines`: every allocator of the config's `space.allocators` at the same budgets: PreCrop against
  uniform scaling, SynFlow, SNIP, GraSP, random, ERK, PFS and PruneNet on equal terms.

Every cell of the grid is trained with the same recipe (the midpoint of each searched range: geometric
for lr and weight decay) and the same seeds, so only the studied dimension differs. The result table
(mean and spread over seeds, and the realized SynExp objective sum_l log d_l read back from each run's
plan) and the paired table (per-seed differences to the reference arm with a 95% CI, search/studies/stats.py)
are printed, logged to the parent MLflow run (study.md, study.csv, paired.csv, study.png) and optionally
written to a folder. `precrop study KIND CONFIG --report` remakes them from MLflow (search/studies/report.py).
"""

from __future__ import annotations

import functools
import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import astuple, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from precrop.textui import format_table
from search.record import tracking
from search.record.models import run_plan
from search.results.outputs import csv_text, new_figure, png_bytes, to_markdown
from search.results.pareto import TrialRun
from search.spec.config import ExperimentConfig
from search.spec.grid import GRANULARITY_LABELS, SYNEXP, Study, make_study  # noqa: F401  (re-exported)
from search.spec.schema import STUDY_FILES, Artifact, Metric, Param
from search.studies.cells import Cell
from search.studies.stats import REFERENCES, paired_csv, paired_rows, reference_of, study_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from precrop.width.costmodel import LayerTable
    from precrop.width.plan import WidthPlan

def study_space(config: ExperimentConfig, study: Study) -> dict[str, Any]:
    """Tune's param space: the fixed recipe plus grid searches over the studied values, budgets, seeds."""
    from ray import tune

    space = config.space
    point: dict[str, Any] = {
        "allocator": SYNEXP,
        "lr": _geometric_mid(space.lr),
        "weight_decay": _geometric_mid(space.weight_decay),
        "label_smoothing": sum(space.label_smoothing) / 2,
        "batch_size": space.batch_size[0],
        "budget": tune.grid_search(list(study.budgets)),
        "seed": tune.grid_search(list(study.seeds)),
    }
    point[str(study.dimension)] = tune.grid_search(list(study.values))
    return point


def _geometric_mid(bounds: tuple[float, float]) -> float:
    low, high = bounds
    return math.sqrt(low * high) if low > 0 else (low + high) / 2


def cell_from_run(run: Run, study: Study, client: MlflowClient | None = None) -> Cell:
    """A Cell from the trial's MLflow run (params, final metrics, the objective of its logged plan)."""
    trial = TrialRun.of(run)
    params, metrics = trial.params, trial.metrics
    plan = run_plan(run, client)  # search/record/models.py
    return Cell(
        value=params[study.dimension],
        budget=float(params[Param.BUDGET]),
        seed=int(params[Param.SEED]),
        val_acc=metrics.get(Metric.FINAL_VAL_ACC),
        test_acc=metrics.get(Metric.TEST_ACC),
        macs_fraction=float(metrics[Metric.MACS_FRACTION]),
        params_fraction=float(metrics[Metric.PARAMS_FRACTION]),
        latency_ms=float(metrics[Metric.LATENCY_MS]),
        objective=None if plan is None else plan_objective(plan),
    )


def plan_objective(plan: WidthPlan) -> float:
    """SynExp's objective sum_l log d_l as realized: kept/base weights of width plans, mask densities of
    mask plans (-inf when a layer keeps nothing)."""
    if plan.masked:
        densities = list(plan.densities.values())
        return -math.inf if min(densities, default=1.0) <= 0 else sum(math.log(d) for d in densities)
    from precrop.width.objective import synexp_objective

    return synexp_objective(_layer_table(plan.arch, plan.num_classes, plan.input_shape[1]), plan.widths)


@functools.lru_cache(maxsize=8)
def _layer_table(arch: str, num_classes: int, input_size: int) -> LayerTable:
    from precrop.nn.build import layer_table

    return layer_table(arch, num_classes, input_size)


def summary_rows(cells: Sequence[Cell], study: Study) -> tuple[list[str], list[list[Any]]]:
    """One row per (value, budget): cost fractions, SynExp objective, latency, accuracy mean +- stdev over seeds."""
    header = [study_label(study), "budget", "MACs frac", "params frac", "sum log d", "CPU ms", "seeds", "val acc",
              "test acc"]  # fmt: skip
    rows = []
    for budget in study.budgets:
        for value in study.values:
            group = [c for c in cells if c.value == value and c.budget == budget]
            if not group:
                continue
            rows.append([
                _label(study, value), f"{budget:g}",
                f"{statistics.fmean(c.macs_fraction for c in group):.3f}",
                f"{statistics.fmean(c.params_fraction for c in group):.3f}",
                _mean_objective(group),
                f"{statistics.fmean(c.latency_ms for c in group):.2f}",
                f"{sum(c.val_acc is not None for c in group)}/{len(study.seeds)}",
                _mean_spread([c.val_acc for c in group]), _mean_spread([c.test_acc for c in group]),
            ])  # fmt: skip
    return header, rows


def _label(study: Study, value: str) -> str:
    """How a value is shown: weight/filter/channel in the granularity study, its own name elsewhere."""
    return GRANULARITY_LABELS.get(value, value) if study.kind == "granularity" else value


def _mean_objective(group: Sequence[Cell]) -> str:
    """The mean over seeds of the realized objective ("-" when no plan could be read)."""
    values = [c.objective for c in group if c.objective is not None]
    return f"{statistics.fmean(values):.2f}" if values else "-"


def _mean_spread(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if len(present) == 1:
        return f"{present[0]:.4f}"
    return f"{statistics.fmean(present):.4f} +- {statistics.stdev(present):.4f}"


def cells_csv(cells: Sequence[Cell]) -> str:
    """Every cell (one line per trained trial)."""
    return csv_text([f.name for f in fields(Cell)], [astuple(c) for c in cells])


def plot_study(cells: Sequence[Cell], study: Study, title: str) -> bytes:
    """Test (else val) accuracy against the MACs and the params fraction (two panels: a budget on one
    cost leaves the other free, so both are shown), one series per studied value, seeds as dots."""
    fig, axes = new_figure((10, 4.4), panels=2, sharey=True)
    costs: tuple[tuple[Callable[[Cell], float], str], ...] = (
        (lambda c: c.macs_fraction, "MACs"), (lambda c: c.params_fraction, "params"),
    )  # fmt: skip
    for ax, (cost, name) in zip(axes, costs, strict=True):
        _plot_series(ax, cells, study, cost)
        ax.set_xlabel(f"{name} (fraction of dense; theoretical for masks)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (test where evaluated, else val)")
    if axes[0].get_legend_handles_labels()[0]:  # no cell trained to the end: no legend
        axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def _plot_series(ax: Axes, cells: Sequence[Cell], study: Study, cost: Callable[[Cell], float]) -> None:
    """One series per studied value on `ax`: a dot per seed, a line through the per-budget means."""
    for index, value in enumerate(study.values):
        color, label = f"C{index}", _label(study, value)
        means: list[tuple[float, float]] = []
        for budget in study.budgets:
            mine = [c for c in cells if c.value == value and c.budget == budget]
            points = [(float(cost(c)), y) for c in mine if (y := _accuracy(c)) is not None]
            if points:
                xs, ys = [x for x, _ in points], [y for _, y in points]
                ax.scatter(xs, ys, s=22, color=color, alpha=0.7, label=label if not means else None)
                means.append((statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)))
        if len(means) > 1:
            ax.plot(*zip(*means, strict=True), color=color, linewidth=1)


def _accuracy(cell: Cell) -> float | None:
    return cell.test_acc if cell.test_acc is not None else cell.val_acc


def paired_title(study: Study) -> str:
    """The line above the paired table: what is compared with what."""
    reference = reference_of(study)
    if reference is None:
        missing = _label(study, REFERENCES.get(study.kind, "uniform"))
        return f"no paired comparison: the reference arm ({missing}) is not in this study"
    return (f"paired by seed, difference to {_label(study, reference)} (arm - {_label(study, reference)}), "
            f"mean and 95% CI (Student t over the seed pairs):")  # fmt: skip


def write_outputs(folder: Path, cells: Sequence[Cell], study: Study, title: str) -> str:
    """study.csv, paired.csv, study.md (both tables) and study.png in `folder`; returns the printed tables."""
    header, rows = summary_rows(cells, study)
    pair_header, pair_rows = paired_rows(cells, study, lambda v: _label(study, v))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / Artifact.STUDY_CSV).write_text(cells_csv(cells))
    (folder / Artifact.PAIRED_CSV).write_text(paired_csv(cells, study))
    markdown = to_markdown(header, rows) + "\n" + paired_title(study) + "\n"
    if pair_rows:
        markdown += "\n" + to_markdown(pair_header, pair_rows)
    (folder / Artifact.STUDY_MD).write_text(markdown)
    (folder / Artifact.STUDY_PNG).write_bytes(plot_study(cells, study, title))
    printed = format_table(header, rows) + "\n\n" + paired_title(study)
    return printed + ("\n" + format_table(pair_header, pair_rows) if pair_rows else "")


def publish(client: MlflowClient, parent_run_id: str, cells: Sequence[Cell], study: Study, title: str,
            heading: str) -> None:  # fmt: skip
    """Log the study's tables and plot to its parent run, write them to its `out_dir` (if any), and print
    the tables under `heading`."""
    with tempfile.TemporaryDirectory() as tmp:
        table = write_outputs(Path(tmp), cells, study, title)
        tracking.log_artifacts(client, parent_run_id, tmp)
    if study.out_dir:
        write_outputs(Path(study.out_dir), cells, study, title)
    print(heading)
    print(table)
    if study.out_dir:
        names = [str(name) for name in STUDY_FILES]
        print(f"wrote {', '.join(names[:-1])} and {names[-1]} to {study.out_dir}")
