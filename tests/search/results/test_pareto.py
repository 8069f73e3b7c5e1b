"""The Pareto front, its table, CSV and plot, on hand-made trial records."""

from __future__ import annotations

import csv
import io

from search.results.pareto import TrialRecord, front_rows, pareto_front, plot_front, to_csv


def record(
    run_id: str, acc: float | None, macs: float, outcome: str = "completed", allocator: str = "synexp"
) -> TrialRecord:
    status = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}[outcome]
    return TrialRecord(run_id, run_id, allocator, 0.5, status, outcome, acc, None, macs, macs / 10, 1.0)


RECORDS = [
    record("cheap", 0.70, 100),
    record("dominated", 0.69, 150),
    record("mid", 0.80, 200, allocator="uniform"),
    record("stopped-but-great", 0.99, 50, outcome="stopped"),
    record("failed", 0.95, 60, outcome="failed"),
    record("big", 0.90, 400),
    record("same-cost-worse", 0.85, 400),
    record("bigger-not-better", 0.90, 800),
]


def test_front_holds_only_non_dominated_completed_trials() -> None:
    front = pareto_front(RECORDS, "macs")
    assert [r.run_id for r in front] == ["cheap", "mid", "big"]
    assert all(r.completed for r in front)


def test_front_on_another_cost_objective() -> None:
    latency = [TrialRecord("a", "a", "synexp", 0.5, "FINISHED", "completed", 0.9, None, 10, 1, 3.0),
               TrialRecord("b", "b", "synexp", 0.5, "FINISHED", "completed", 0.8, None, 5, 1, 4.0)]  # fmt: skip
    assert [r.run_id for r in pareto_front(latency, "latency_ms")] == ["a"]
    assert [r.run_id for r in pareto_front(latency, "macs")] == ["b", "a"]


def test_table_csv_and_plot() -> None:
    front = pareto_front(RECORDS, "macs")
    header, rows = front_rows(front)
    assert header[0] == "run id" and rows[0][:4] == ["cheap", "synexp", "0.500", "70.00%"]
    parsed = list(csv.DictReader(io.StringIO(to_csv(RECORDS, {r.run_id for r in front}))))
    assert len(parsed) == len(RECORDS)
    assert {row["run_id"] for row in parsed if row["pareto"] == "True"} == {"cheap", "mid", "big"}
    png = plot_front(RECORDS, front, "macs", "test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert plot_front([], [], "macs", "empty")[:4] == b"\x89PNG"
