"""The Pareto front of a search (val accuracy up, cost down), read from MLflow runs alone.

Only trials that trained every epoch and whose run FINISHED can be on the front: an ASHA-stopped
trial's early accuracy is not comparable, and a failed trial has no final model.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from search.tracking import OUTCOME_TAG

COST_LABELS = {"macs": "MACs", "params": "parameters", "latency_ms": "CPU latency (ms)"}


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

    @property
    def completed(self) -> bool:
        """Trained every epoch and its run ended FINISHED."""
        return self.status == "FINISHED" and self.outcome == "completed" and self.val_acc is not None

    def cost(self, objective: str) -> float | None:
        """The value of the cost objective (macs, params or latency_ms)."""
        value = getattr(self, objective)
        return None if value is None else float(value)


def record_from_run(run: Any) -> TrialRecord:
    """A TrialRecord from an mlflow Run."""
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    budget = params.get("budget")
    outcome = tags.get(OUTCOME_TAG, "running" if run.info.status == "RUNNING" else "unknown")
    val = metrics.get("final_val_acc") if outcome == "completed" else metrics.get("val_acc")
    return TrialRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        allocator=params.get("allocator", tags.get("precrop.allocator", "?")),
        budget=float(budget) if budget is not None else None,
        status=run.info.status,
        outcome=outcome,
        val_acc=val,
        test_acc=metrics.get("test_acc"),
        macs=metrics.get("macs"),
        params=metrics.get("params"),
        latency_ms=metrics.get("latency_ms"),
    )


def pareto_front(records: Iterable[TrialRecord], cost: str) -> list[TrialRecord]:
    """Completed trials no other completed trial beats on both accuracy and cost, cheapest first."""
    candidates = [
        r for r in records if r.completed and r.cost(cost) is not None and math.isfinite(r.val_acc or math.nan)
    ]
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
    buffer = io.StringIO()
    names = [*asdict(records[0]).keys(), "pareto"] if records else ["run_id", "pareto"]
    writer = csv.DictWriter(buffer, fieldnames=names)
    writer.writeheader()
    for record in records:
        writer.writerow({**asdict(record), "pareto": record.run_id in front_ids})
    return buffer.getvalue()


def plot_front(records: Sequence[TrialRecord], front: Sequence[TrialRecord], cost: str, title: str) -> bytes:
    """PNG: every trial (marker per allocator, stopped/failed trials hollow grey), the front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
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
    if cost in ("macs", "params"):
        axes.set_xscale("log")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if records:
        axes.legend(fontsize=8, loc="best")  # "best" keeps the legend off the points
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


# one colour and marker per method, fixed across plots: width methods filled shapes, mask methods others
METHOD_ORDER = ("synexp", "uniform", "pfs", "prunenet", "synflow", "snip", "grasp", "random", "erk",
                "synexp_weight", "synexp_filter", "dense")  # fmt: skip
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
