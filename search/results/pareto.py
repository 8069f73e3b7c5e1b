"""The Pareto front of a search (val accuracy up, cost down), read from MLflow runs alone.

Only trials that trained every epoch and whose run FINISHED can be on the front: an ASHA-stopped
trial's early accuracy is not comparable, and a failed trial has no final model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass
from typing import TYPE_CHECKING, Any

from precrop.errors import UserError
from precrop.methods.registry import METHODS
from search.record import tracking
from search.results.outputs import csv_text, new_figure, png_bytes
from search.spec.config import limit_excess
from search.spec.schema import Metric, Outcome, Param, RunStatus, Tag

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

COST_LABELS: dict[str, str] = {Metric.MACS: "MACs", Metric.PARAMS: "parameters", Metric.LATENCY_MS: "CPU latency (ms)"}


@dataclass(frozen=True)
class TrialRun:
    """A trial's MLflow child run, read by name once: the front's records and a study's cells are built
    from it, each taking the fields it needs."""

    run_id: str
    name: str
    status: str
    outcome: str
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    tags: Mapping[str, str]

    @classmethod
    def of(cls, run: Run) -> TrialRun:
        """Read an mlflow Run (a run without an outcome tag shows `running` or `unknown`)."""
        info, data = run.info, run.data
        unended = Outcome.RUNNING if info.status == RunStatus.RUNNING else Outcome.UNKNOWN
        return cls(run_id=info.run_id, name=info.run_name or info.run_id[:8], status=info.status,
                   outcome=data.tags.get(Tag.OUTCOME, str(unended)), params=data.params, metrics=data.metrics,
                   tags=data.tags)  # fmt: skip

    @property
    def completed(self) -> bool:
        """Trained every epoch and its run ended FINISHED (with its final accuracy logged)."""
        return self.status == RunStatus.FINISHED and self.outcome == Outcome.COMPLETED and self.val_acc is not None

    @property
    def allocator(self) -> str:
        """The method that allocated the trial's widths ("?" when the run has not logged it)."""
        return self.params.get(Param.ALLOCATOR, self.tags.get(Tag.ALLOCATOR, "?"))

    @property
    def budget(self) -> float | None:
        """The trial's budget (a fraction of the dense model's budget metric)."""
        budget = self.params.get(Param.BUDGET)
        return float(budget) if budget is not None else None

    @property
    def val_acc(self) -> float | None:
        """The final validation accuracy of a completed trial, else the last epoch's."""
        return self.metrics.get(Metric.FINAL_VAL_ACC if self.outcome == Outcome.COMPLETED else Metric.VAL_ACC)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow knows it."""

    run_id: str
    name: str
    allocator: str
    budget: float | None
    status: str
    outcome: str
    val_acc: float | None
    test_acc: float | None
    macs: float | None
    params: float | None
    latency_ms: float | None
    within_limits: bool = True  # False: over a hard limit of its search (constraints:), never on the front

    @property
    def completed(self) -> bool:
        """Trained every epoch and its run ended FINISHED."""
        return self.status == RunStatus.FINISHED and self.outcome == Outcome.COMPLETED and self.val_acc is not None

    def over_limits(self, limits: Mapping[str, float]) -> list[str]:
        """The limits this trial's costs exceed ('latency_ms <= 5'); a cost it has not logged counts as over."""
        excess = limit_excess({name: self.cost(name) for name in limits}, limits)
        return [f"{name} <= {limit:g}" for name, limit in limits.items() if excess[name] > 0]

    def cost(self, objective: str) -> float | None:
        """The value of the cost objective (macs, params or latency_ms)."""
        value = getattr(self, objective)
        return None if value is None else float(value)


def record_from_run(run: Run) -> TrialRecord:
    """A TrialRecord from an mlflow Run."""
    trial = TrialRun.of(run)
    metrics = trial.metrics
    return TrialRecord(
        run_id=trial.run_id, name=trial.name, allocator=trial.allocator, budget=trial.budget, status=trial.status,
        outcome=trial.outcome, val_acc=trial.val_acc, test_acc=metrics.get(Metric.TEST_ACC),
        macs=metrics.get(Metric.MACS), params=metrics.get(Metric.PARAMS), latency_ms=metrics.get(Metric.LATENCY_MS),
        within_limits=trial.tags.get(Tag.WITHIN_LIMITS) != "false",
    )  # fmt: skip


def search_trials(client: MlflowClient, experiment_name: str, search: str | None) -> list[TrialRecord]:
    """Every trial of MLflow experiment `experiment_name` (of the search named `search`, when given)."""
    experiment = tracking.experiment_id(client, experiment_name, create=False)
    parent = None
    if search:
        found = tracking.latest_parent_run(client, experiment, {Tag.SEARCH: search})
        if found is None:
            raise UserError(f"no search named {search!r} in experiment {experiment_name!r}")
        parent = found.info.run_id
    return [record_from_run(r) for r in tracking.trial_runs(client, experiment, parent)]


def pareto_front(records: Iterable[TrialRecord], cost: str) -> list[TrialRecord]:
    """Completed trials within their search's limits that no other such trial beats on both accuracy and cost,
    cheapest first."""
    candidates = [
        r for r in records
        if r.completed and r.within_limits and r.cost(cost) is not None and math.isfinite(r.val_acc or math.nan)
    ]  # fmt: skip
    candidates.sort(key=lambda r: (r.cost(cost), -(r.val_acc or 0.0)))
    front: list[TrialRecord] = []
    best = -math.inf
    for record in candidates:
        accuracy = record.val_acc or 0.0
        if accuracy > best:
            front.append(record)
            best = accuracy
    return front


def front_rows(front: Sequence[TrialRecord]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the printed front."""
    header = ["run id", "allocator", "budget", "val acc", "test acc", "MACs", "params", "latency ms"]
    rows = [
        [
            r.run_id,
            r.allocator,
            _fmt(r.budget, "{:.3f}"),
            _fmt(r.val_acc, "{:.2%}"),
            _fmt(r.test_acc, "{:.2%}"),
            _fmt(r.macs, "{:,.0f}"),
            _fmt(r.params, "{:,.0f}"),
            _fmt(r.latency_ms, "{:.3f}"),
        ]
        for r in front
    ]
    return header, rows


def to_csv(records: Sequence[TrialRecord], front_ids: set[str]) -> str:
    """Every trial as CSV with a `pareto` column."""
    names = [*asdict(records[0]).keys(), "pareto"] if records else ["run_id", "pareto"]
    return csv_text(names, [[*astuple(r), r.run_id in front_ids] for r in records])


def plot_front(records: Sequence[TrialRecord], front: Sequence[TrialRecord], cost: str, title: str) -> bytes:
    """PNG: every trial (marker per allocator, stopped/failed trials hollow grey), the front as a line."""
    figure, axes = new_figure((7, 4.5))
    for allocator in sorted({r.allocator for r in records}, key=_method_order):
        mine = [r for r in records if r.allocator == allocator and r.cost(cost) is not None and r.val_acc is not None]
        done = [r for r in mine if r.completed]
        other = [r for r in mine if not r.completed]
        marker, color = _style(allocator)
        if done:
            axes.scatter(*_xy(done, cost), marker=marker, color=color,
                         label=f"{allocator} (trained to the end)", alpha=0.8)  # fmt: skip
        if other:
            label = f"{allocator} (stopped early / failed)"
            axes.scatter(*_xy(other, cost), marker=marker, facecolors="none", edgecolors="grey", label=label)
    if front:
        axes.plot(*_xy(front, cost), color="black", linewidth=1.2,
                  drawstyle="steps-post", label="Pareto front")  # fmt: skip
        axes.scatter(*_xy(front, cost), s=90, facecolors="none",
                     edgecolors="black", linewidths=1.5)  # fmt: skip
    axes.set_xlabel(COST_LABELS.get(cost, cost))
    axes.set_ylabel("validation accuracy")
    if cost in (Metric.MACS, Metric.PARAMS):
        axes.set_xscale("log")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:  # no trial trained to the end: no labelled points, no legend
        axes.legend(fontsize=8, loc="best")  # "best" keeps the legend off the points
    return png_bytes(figure)


# one colour and marker per method, fixed across plots: the registry's order (width methods, then mask
# methods), then the dense model's plan (precrop.width.allocate.dense_plan names its allocator "dense")
METHOD_ORDER = (*METHODS, "dense")
MARKERS = ("o", "s", "D", "p", "^", "v", "<", ">", "X", "P", "*", "d")


def _method_order(allocator: str) -> int:
    return METHOD_ORDER.index(allocator) if allocator in METHOD_ORDER else len(METHOD_ORDER)


def _style(allocator: str) -> tuple[str, str]:
    """(marker, colour) of a method; unknown names share the last style."""
    index = min(_method_order(allocator), len(MARKERS) - 1)
    return MARKERS[index], f"C{index % 10}" if index < 10 else "tab:olive"


def front_tag_updates(records: Sequence[TrialRecord], front: Sequence[TrialRecord]) -> dict[str, str]:
    """run id -> value of the `pareto` tag ("true" on the front, "false" elsewhere)."""
    members = {r.run_id for r in front}
    return {r.run_id: "true" if r.run_id in members else "false" for r in records}


def _xy(records: Sequence[TrialRecord], cost: str) -> tuple[list[float], list[float]]:
    """Cost and accuracy of records that have both."""
    points = [(r.cost(cost), r.val_acc) for r in records]
    kept = [(float(x), float(y)) for x, y in points if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
