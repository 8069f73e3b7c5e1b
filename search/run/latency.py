"""Latency as an objective: one measurement per plan per search, and a quiet re-timing at the end.

During a search every core runs a trial, so a latency timed inside a trial measures the contention as
much as the model (identical shapes measured 2.4 to 243 ms on the 2-core box). Two things keep the
number honest:

- **Once per plan, during the search.** A trial looks its plan up by fingerprint (architecture,
  classes, input shape, widths and batch size: what executes) in the search's `LatencyBook`, a named
  Ray actor the driver starts, and times the model only when no trial of this search has. So the
  searcher sees one value per plan, and a trial whose plan was seen before skips the timing.
- **Once more, at the end, on the idle machine.** Before the front is computed, the driver (or
  `precrop reconcile`) rebuilds every distinct plan of the trials that trained to the end (of the front's
  trials only, when latency is neither the cost objective nor a limit), times each
  again with nothing else running (the trials' thread count, interleaved rounds, the fastest round's
  median), and logs it as the run's `latency_ms`; the in-search value stays as `latency_ms_in_search`.
  The front, `pareto.csv`, `precrop pareto` and study tables use the quiet value.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from precrop.width.plan import WidthPlan
from search.spec.schema import Metric, Tag

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from ray.actor import ActorHandle

    from search.spec.config import ExperimentConfig

# re-timing: interleaved rounds over the plans, each round a median; a load burst spoils a round, not a plan
ROUNDS = 5
WARMUP = 2
REPEATS = 20
ROUND_SECONDS = 0.5
# inside a trial, where other trials share the cores anyway, fewer rounds: less time taken from training
IN_SEARCH_ROUNDS = 2

_LOCAL: dict[tuple[str, str], float] = {}  # (search, fingerprint) -> ms, per worker process


def plan_fingerprint(plan: WidthPlan, batch: int, runtime: str = "eager", device: str = "cpu") -> str:
    """What latency depends on: the executed shapes (mask plans keep the dense widths), the batch, and where
    it is timed (runtime and device type)."""
    what = {"arch": plan.arch, "num_classes": plan.num_classes, "input_shape": list(plan.input_shape),
            "widths": dict(sorted(plan.widths.items())), "batch": batch, "runtime": runtime,
            "device": device}  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def book_name(search_id: str) -> str:
    """The name of a search's LatencyBook actor (one per search; `search_id` is its parent run id)."""
    return f"precrop-latency-{search_id}"


class LatencyBook:
    """Fingerprint -> milliseconds, shared by every trial of a search (a Ray actor)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def get(self, key: str) -> float | None:
        """The value recorded for `key`, if any."""
        return self.values.get(key)

    def put(self, key: str, value: float) -> float:
        """Record `value` unless a trial was first; return what is recorded (so both agree)."""
        return self.values.setdefault(key, value)


def open_book(search_id: str) -> object:
    """Start the search's LatencyBook (no CPU reserved); keep the returned handle while the trials run."""
    import ray

    actor = ray.remote(num_cpus=0)(LatencyBook)
    return actor.options(name=book_name(search_id), get_if_exists=True).remote()


def _find_book(search_id: str) -> ActorHandle[LatencyBook] | None:
    import ray

    if not ray.is_initialized():
        return None
    try:
        return ray.get_actor(book_name(search_id))
    except ValueError:  # no book (a trial run outside a search): this process's cache alone
        return None


def cached_latency(search_id: str, fingerprint: str, measure: Callable[[], float]) -> float:
    """The search's latency for `fingerprint`: from this process, else the search's book, else `measure()`."""
    import ray

    key = (search_id, fingerprint)
    if key in _LOCAL:
        return _LOCAL[key]
    book = _find_book(search_id)
    # Ray types what an actor method returns only loosely: the book holds floats
    known = cast("float | None", ray.get(book.get.remote(fingerprint))) if book is not None else None
    if known is None:
        known = measure()
        if book is not None:
            known = cast(float, ray.get(book.put.remote(fingerprint, known)))
    _LOCAL[key] = float(known)
    return _LOCAL[key]


def time_models(
    models: Sequence[torch.nn.Module], input_shapes: Sequence[tuple[int, int, int]], batch: int,
    rounds: int = ROUNDS, runtime: str = "eager", device: torch.device | None = None,
) -> list[float]:  # fmt: skip
    """Latency (ms) of each model on `runtime` and `device` (the CPU by default, with the current torch
    threads): the median of `REPEATS` calls after warm-up (search/run/runtimes.py says how each runtime is
    called), the fastest of `rounds` rounds that visit every model in turn. The models are left as they were."""
    import torch

    from search.run.runtimes import prepared_call
    from trainers.measure import time_call
    from trainers.memory import freed_memory_kept

    where = device if device is not None else torch.device("cpu")

    def median_ms(call: Callable[[], None]) -> float:
        return time_call(call, where, WARMUP, REPEATS, ROUND_SECONDS).median_ms

    def best_of_rounds() -> list[float]:  # its copies and sessions are freed when it returns, before the release
        calls = [prepared_call(model, shape, batch, runtime, where) for model, shape in zip(models, input_shapes,
                                                                                             strict=True)]  # fmt: skip
        if calls:  # a process's first timing runs slow (thread pool, allocator, kernel selection): discarded
            median_ms(calls[0])
        best = [float("inf")] * len(calls)
        for _ in range(rounds):
            for i, call in enumerate(calls):
                best[i] = min(best[i], median_ms(call))
        return best

    with freed_memory_kept():
        return best_of_rounds()


@dataclass(frozen=True)
class Retimed:
    """What the end-of-search re-timing did."""

    plans: int
    runs: int
    seconds: float = 0.0
    runtime: str = "eager"
    skipped: str = ""  # why nothing was re-timed, when that is worth saying
    front_only: bool = False  # only the front's runs (latency_decides_nothing)

    def describe(self) -> str:
        """One line for the driver's output."""
        if self.skipped:
            return self.skipped
        which = "front" if self.front_only else "completed"
        return (f"re-timed the CPU latency ({self.runtime}) of {self.plans} distinct plan(s) of {self.runs} {which} "
                f"run(s) on the idle machine ({self.seconds:.1f} s)")  # fmt: skip


def retime_search(client: MlflowClient, config: ExperimentConfig, experiment_id: str, parent_run_id: str) -> Retimed:
    """Time every distinct plan of the search's completed runs again, now that nothing else runs, with
    the trials' thread count and latency batch; log `latency_ms` (and the in-search value as
    `latency_ms_in_search`) on each. Runs re-timed earlier are left alone: reconciling again changes
    nothing."""
    from search.record import tracking
    from search.record.models import load_run_plan
    from search.results.pareto import TrialRun

    started = time.perf_counter()
    batch, threads = config.objectives.latency_batch, max(1, int(config.resources.cpu))
    runtime = config.objectives.latency_runtime
    if config.objectives.latency_device == "trial" and config.resources.gpu > 0:
        return Retimed(0, 0, runtime=runtime, skipped=f"latency was timed on the trials' GPUs ({runtime}, CUDA "
                       "events): not re-timed on the driver")  # fmt: skip
    completed = [r for r in tracking.trial_runs(client, experiment_id, parent_run_id) if TrialRun.of(r).completed]
    front_only = latency_decides_nothing(config)
    if front_only:
        completed = front_runs(config, completed)
    runs = [r for r in completed if Metric.LATENCY_MS_IN_SEARCH not in r.data.metrics]
    by_print: dict[str, tuple[WidthPlan, list[Run]]] = {}
    for run in runs:
        plan = load_run_plan(client, run.info.run_id)
        if plan is not None:
            by_print.setdefault(plan_fingerprint(plan, batch, runtime), (plan, []))[1].append(run)
    if not by_print:
        return Retimed(0, 0, runtime=runtime)
    values = retime_plans([plan for plan, _ in by_print.values()], batch, threads, runtime)
    where = f"end of search on {socket.gethostname()}, {runtime} on cpu, {threads} CPU thread(s), batch {batch}"
    for (_, group), value in zip(by_print.values(), values, strict=True):
        for run in group:
            metrics: dict[str, float] = {Metric.LATENCY_MS: value}
            if Metric.LATENCY_MS in run.data.metrics:
                metrics[Metric.LATENCY_MS_IN_SEARCH] = run.data.metrics[Metric.LATENCY_MS]
            tracking.log_metrics(client, run.info.run_id, metrics, step=0)
            tracking.set_tags(client, run.info.run_id, {Tag.LATENCY_TIMED: where})
    return Retimed(len(by_print), sum(len(group) for _, group in by_print.values()), time.perf_counter() - started,
                   runtime, front_only=front_only)  # fmt: skip


def latency_decides_nothing(config: ExperimentConfig) -> bool:
    """Whether the quiet latency changes no ranking: cost is macs or params and no latency limit is set. Then
    only the front's runs are re-timed (their latency is shown and exported); at 1,000 trials re-timing every
    distinct plan built 1,000 models on the driver at the end (docs/benchmarks.md)."""
    return config.objectives.cost != Metric.LATENCY_MS and Metric.LATENCY_MS not in config.constraints.limits()


def front_runs(config: ExperimentConfig, completed: list[Run]) -> list[Run]:
    """The completed runs on the accuracy-cost front, the config's (non-latency) limits applied first."""
    from search.results.pareto import pareto_front, record_from_run

    limits = config.constraints.limits()
    records = [record_from_run(r) for r in completed]
    front = {r.run_id for r in pareto_front([r for r in records if not r.over_limits(limits)], config.objectives.cost)}
    return [r for r in completed if r.info.run_id in front]


def retime_plans(plans: Iterable[WidthPlan], batch: int, threads: int, runtime: str = "eager") -> list[float]:
    """Build each plan's model and time it with `threads` torch threads (restored afterwards)."""
    import torch

    from precrop.nn.build import build_from_plan

    plans = list(plans)
    models = [build_from_plan(plan, seed=0) for plan in plans]
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return time_models(models, [plan.input_shape for plan in plans], batch, runtime=runtime)
    finally:
        torch.set_num_threads(before)
