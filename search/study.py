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
plan) and the paired table (per-seed differences to the reference arm with a 95% CI, search/study_stats.py)
are printed, logged to the parent MLflow run (study.md, study.csv, paired.csv, study.png) and optionally
written to a folder. `precrop study KIND CONFIG --report` remakes them from MLflow (search/study_report.py).
"""

from __future__ import annotations

import csv
import functools
import io
import math
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from precrop.fileio import check_writable_dir
from precrop.textui import format_table
from search.config import ConfigError, ExperimentConfig
from search.study_stats import REFERENCES, paired_csv, paired_rows, reference_of, study_label

if TYPE_CHECKING:
    from precrop.width.costmodel import LayerTable
    from precrop.width.plan import WidthPlan

GRANULARITY = ("synexp_weight", "synexp_filter", "synexp")
GRANULARITY_LABELS = {"synexp_weight": "weight", "synexp_filter": "filter", "synexp": "channel"}
MAPPING_VARIANTS = ("fit", "gp", "internal")


@dataclass(frozen=True)
class Study:
    """A grid: `dimension` ("allocator" or "variant") over `values`, crossed with budgets and seeds."""

    kind: str
    dimension: str
    values: tuple[str, ...]
    budgets: tuple[float, ...]
    seeds: tuple[int, ...]
    out_dir: str | None = None  # where to write study.csv/md/png besides MLflow

    @property
    def trials(self) -> int:
        """Cells in the grid."""
        return len(self.values) * len(self.budgets) * len(self.seeds)

    def points(self) -> list[tuple[str, str, float]]:
        """(allocator, variant or "", budget) of every cell, seeds aside: what preflight checks."""
        allocators = self.values if self.dimension == "allocator" else ("synexp",)
        variants = self.values if self.dimension == "variant" else ("",)
        return [(a, v, b) for a in allocators for v in variants for b in self.budgets]


def make_study(
    kind: str, budgets: Sequence[float], seeds: int, out_dir: str | None = None, allocators: Sequence[str] = ()
) -> Study:
    """The study `kind` at these budgets, over seeds 0..seeds-1 (`allocators`: the baselines compared)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
    if not budgets:
        raise ConfigError("give at least one budget")
    if kind == "granularity":
        return Study(kind, "allocator", GRANULARITY, tuple(budgets), tuple(range(seeds)), out_dir)
    if kind == "baselines":
        return Study(kind, "allocator", tuple(allocators), tuple(budgets), tuple(range(seeds)), out_dir)
    if kind == "mapping":
        return Study(kind, "variant", MAPPING_VARIANTS, tuple(budgets), tuple(range(seeds)), out_dir)
    raise ConfigError(f"unknown study {kind!r}; choose granularity, mapping or baselines")


def study_space(config: ExperimentConfig, study: Study) -> dict[str, Any]:
    """Tune's param space: the fixed recipe plus grid searches over the studied values, budgets, seeds."""
    from ray import tune

    space = config.space
    point: dict[str, Any] = {
        "allocator": "synexp",
        "lr": _geometric_mid(space.lr),
        "weight_decay": _geometric_mid(space.weight_decay),
        "label_smoothing": sum(space.label_smoothing) / 2,
        "batch_size": space.batch_size[0],
        "budget": tune.grid_search(list(study.budgets)),
        "seed": tune.grid_search(list(study.seeds)),
    }
    point[study.dimension] = tune.grid_search(list(study.values))
    return point


def _geometric_mid(bounds: tuple[float, float]) -> float:
    low, high = bounds
    return math.sqrt(low * high) if low > 0 else (low + high) / 2


@dataclass(frozen=True)
class Cell:
    """One trained cell of a study, as read back from its MLflow run."""

    value: str
    budget: float
    seed: int
    val_acc: float | None
    test_acc: float | None
    macs_fraction: float
    params_fraction: float
    latency_ms: float
    objective: float | None = None  # SynExp's sum_l log d_l of the realized plan


def cell_from_run(run: Any, study: Study, client: Any = None) -> Cell:
    """A Cell from the trial's MLflow run (params, final metrics, the objective of its logged plan)."""
    params, metrics = run.data.params, run.data.metrics
    plan = run_plan(run, client)
    return Cell(
        value=params[study.dimension],
        budget=float(params["budget"]),
        seed=int(params["seed"]),
        val_acc=metrics.get("final_val_acc"),
        test_acc=metrics.get("test_acc"),
        macs_fraction=float(metrics["macs_fraction"]),
        params_fraction=float(metrics["params_fraction"]),
        latency_ms=float(metrics["latency_ms"]),
        objective=None if plan is None else plan_objective(plan),
    )


def run_plan(run: Any, client: Any = None) -> WidthPlan | None:
    """The plan the run logged (through `client`, else its artifact URI); None when it cannot be read."""
    from mlflow.exceptions import MlflowException

    from precrop.errors import UserError

    try:
        if client is not None:
            from search.models import load_run_plan

            return load_run_plan(client, run.info.run_id)
        return _plan_at(str(run.info.artifact_uri))
    except (MlflowException, OSError, UserError, ValueError, KeyError):
        return None


def _plan_at(artifact_uri: str) -> WidthPlan | None:
    """`plan/plan.json`, else `model/plan.json`, under a run's artifact URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from precrop.width.plan import WidthPlan

    for folder in ("plan", "model"):
        uri = f"{artifact_uri}/{folder}/plan.json"
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            except (MlflowException, OSError):
                continue
            return WidthPlan.from_json(Path(path).read_text())
    return None


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


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def cells_csv(cells: Sequence[Cell]) -> str:
    """Every cell (one line per trained trial)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["value", "budget", "seed", "val_acc", "test_acc", "macs_fraction", "params_fraction",
                     "latency_ms", "objective"])  # fmt: skip
    for c in cells:
        writer.writerow([c.value, c.budget, c.seed, c.val_acc, c.test_acc, c.macs_fraction, c.params_fraction,
                         c.latency_ms, c.objective])  # fmt: skip
    return buffer.getvalue()


def plot_study(cells: Sequence[Cell], study: Study, title: str) -> bytes:
    """Test (else val) accuracy against the MACs and the params fraction (two panels: a budget on one
    cost leaves the other free, so both are shown), one series per studied value, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=120, sharey=True)
    costs = (("macs_fraction", "MACs"), ("params_fraction", "params"))
    for ax, (field, name) in zip(axes, costs, strict=True):
        _plot_series(ax, cells, study, field)
        ax.set_xlabel(f"{name} (fraction of dense; theoretical for masks)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (test where evaluated, else val)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _plot_series(ax: Any, cells: Sequence[Cell], study: Study, field: str) -> None:
    """One series per studied value on `ax`: a dot per seed, a line through the per-budget means."""
    for index, value in enumerate(study.values):
        color, label = f"C{index}", _label(study, value)
        means: list[tuple[float, float]] = []
        for budget in study.budgets:
            mine = [c for c in cells if c.value == value and c.budget == budget]
            points = [(float(getattr(c, field)), y) for c in mine if (y := _accuracy(c)) is not None]
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
    (folder / "study.csv").write_text(cells_csv(cells))
    (folder / "paired.csv").write_text(paired_csv(cells, study))
    markdown = to_markdown(header, rows) + "\n" + paired_title(study) + "\n"
    if pair_rows:
        markdown += "\n" + to_markdown(pair_header, pair_rows)
    (folder / "study.md").write_text(markdown)
    (folder / "study.png").write_bytes(plot_study(cells, study, title))
    printed = format_table(header, rows) + "\n\n" + paired_title(study)
    return printed + ("\n" + format_table(pair_header, pair_rows) if pair_rows else "")
