"""What a reused trial actor keeps warm (data, layer table), the per-search latency cache, and the
quiet re-timing of every completed run's latency at the end of a search."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from mlflow import MlflowClient

from precrop.methods.registry import AllocationRequest, realize
from precrop.nn.build import layer_table
from precrop.width.plan import WidthPlan
from search.run.latency import LatencyBook, cached_latency, plan_fingerprint, retime_search
from search.run.trial import cached_dataset, cached_layer_table
from search.spec.parse import load_config
from search.spec.schema import Metric, Tag
from tests.search.conftest import TINY_CONFIG, run_precrop, write_config
from trainers.datasets import DataRequest


def test_data_set_is_loaded_once_per_request() -> None:
    request = DataRequest("digits", val_fraction=0.1, seed=0)
    first = cached_dataset(request)
    assert cached_dataset(DataRequest("digits", val_fraction=0.1, seed=0)) is first
    other = cached_dataset(DataRequest("digits", val_fraction=0.2, seed=0))
    assert other is not first and len(other.val) > len(first.val)


def test_layer_table_is_traced_once_per_architecture_classes_and_size() -> None:
    first = cached_layer_table("cifar_resnet20", 10, 8)
    assert cached_layer_table("cifar_resnet20", 10, 8) is first
    other = cached_layer_table("cifar_resnet20", 10, 16)
    assert other is not first and other.input_shape[1:] == (16, 16) and first.input_shape[1:] == (8, 8)


def test_fingerprint_is_what_executes() -> None:
    table = layer_table("cifar_resnet20", 10, 8)

    def uniform(budget: float) -> WidthPlan:
        return realize("uniform", table, AllocationRequest(macs=budget, divisor=8, min_width=8), None).plan

    # budgets 0.621 and 0.625 both land on the same widths (the next divisor step does not fit either)
    low, near, dense = uniform(0.621), uniform(0.625), uniform(1.0)
    assert dict(low.widths) == dict(near.widths) and low.budget != near.budget
    assert plan_fingerprint(low, 1) == plan_fingerprint(near, 1)
    assert plan_fingerprint(low, 1) != plan_fingerprint(dense, 1)
    assert plan_fingerprint(low, 1) != plan_fingerprint(low, 8)


def test_latency_is_measured_once_per_plan_fingerprint() -> None:
    measured: list[str] = []

    def measure(value: float, name: str) -> float:
        measured.append(name)
        return value

    first = cached_latency("search-a", "plan-1", lambda: measure(2.5, "a1"))
    again = cached_latency("search-a", "plan-1", lambda: measure(99.0, "a1 again"))
    other = cached_latency("search-a", "plan-2", lambda: measure(7.0, "a2"))
    elsewhere = cached_latency("search-b", "plan-1", lambda: measure(3.0, "b1"))  # another search times its own
    assert (first, again, other, elsewhere) == (2.5, 2.5, 7.0, 3.0)
    assert measured == ["a1", "a2", "b1"]


def test_latency_book_keeps_the_first_value() -> None:
    book = LatencyBook()
    assert book.get("plan") is None
    assert book.put("plan", 1.5) == 1.5
    assert book.put("plan", 9.0) == 1.5  # a trial that timed the same plan concurrently adopts the first value
    assert book.get("plan") == 1.5


@pytest.mark.ray
def test_search_retimes_latency_of_every_finished_run(tmp_path: Path) -> None:
    """Two trials of the same plan at once (uniform at the full budget): one in-search value for both
    (the shared book), then one quiet value logged as each run's latency_ms at the end."""
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "retime"
    config["space"].update(allocators=["uniform"], budget=1.0, epochs=1)
    config["search"].update(trials=2, concurrency=2)
    config["asha"] = {"enabled": False}
    config["objectives"] = {"cost": "latency_ms"}
    write_config(tmp_path, config, "retime.yaml")
    done = run_precrop(tmp_path, "search", "retime.yaml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "re-timed the CPU latency (eager) of 1 distinct plan(s) of 2 completed run(s)" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("retime")
    assert experiment is not None
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("precrop.role") == "trial"]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        metrics = run.data.metrics
        assert metrics["latency_ms"] > 0 and metrics[Metric.LATENCY_MS_IN_SEARCH] > 0
        assert run.data.tags[Tag.LATENCY_TIMED].startswith("end of search on ")
        history = sorted(client.get_metric_history(run.info.run_id, "latency_ms"), key=lambda m: m.timestamp)
        assert [m.step for m in history] == [0, 0] and history[0].value == metrics[Metric.LATENCY_MS_IN_SEARCH]
    assert len({r.data.metrics["latency_ms"] for r in runs}) == 1  # one plan, one quiet value
    assert len({r.data.metrics[Metric.LATENCY_MS_IN_SEARCH] for r in runs}) == 1  # and one in-search value
    # re-timing again (`precrop reconcile` does) changes nothing: runs re-timed once keep their value
    parent = runs[0].data.tags["mlflow.parentRunId"]
    again = retime_search(client, load_config(tmp_path / "retime.yaml"), experiment.experiment_id, parent)
    assert (again.plans, again.runs) == (0, 0)
