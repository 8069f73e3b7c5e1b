"""One Ray Tune trial: allocate widths, build the cropped model, train it, log it to its MLflow child run.

Reports go through `ray.tune.report` once per epoch, each with a checkpoint (the loop's resume state and
the trial's MLflow run id) and every objective, so the searcher and ASHA always see complete results.
A retried or resumed trial finds its run id in the checkpoint (or, if it died before the first one, by
its trial-id tag) and continues that run instead of opening a second one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray import tune

from precrop.methods.base import Probe
from precrop.methods.masks import apply_masks
from precrop.methods.plan_report import render_plan
from precrop.methods.registry import method, realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import dense_plan
from precrop.width.costmodel import LayerTable
from precrop.width.plan import WidthPlan
from search.record import tracking
from search.record.checkpoints import Resume, read_checkpoint, write_checkpoint_dir
from search.record.run_logger import RunLogger, log_final, log_setup, setup_metrics, setup_params
from search.record.sender import Sender
from search.run.latency import IN_SEARCH_ROUNDS, cached_latency, plan_fingerprint, time_models
from search.run.runtimes import describe as describe_runtime
from search.run.runtimes import latency_device
from search.spec.config import ExperimentConfig
from search.spec.schema import Metric, Outcome, ResultKey, Tag
from search.spec.space import TrialSpec, data_request
from trainers.batches import PROBE_BATCH_SIZE, PROBE_BATCHES, probe_batches
from trainers.checkpoint import Preprocess
from trainers.datasets import DataRequest, DataSet
from trainers.load import load_dataset
from trainers.loop import Metrics, Trainer, TrainState
from trainers.memory import freeze_startup_objects, peak_rss_mb, release_freed_memory, reset_peak_rss, rss_mb
from trainers.start import model_for_plan

if TYPE_CHECKING:
    from mlflow import MlflowClient

# how long a trial's end waits for its queued MLflow requests: a safety cap, as each request gives up on a
# silent server by itself (15 s; an artifact upload, tracking.ARTIFACT_TIMEOUT_S)
CLOSE_TIMEOUT_S = tracking.ARTIFACT_TIMEOUT_S + 30


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled point (passed with `tune.with_parameters`)."""

    config: ExperimentConfig
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    cpus: float


@functools.lru_cache(maxsize=2)
def cached_dataset(request: DataRequest) -> DataSet:
    """The data set `request` names, loaded once per worker process: Tune reuses a trial's actor (and its
    process) for the next trial, so only the first trial of each slot pays for loading."""
    return load_dataset(request)


@functools.lru_cache(maxsize=8)
def cached_layer_table(arch: str, num_classes: int, input_size: int) -> LayerTable:
    """The dense architecture's layer table (a trace of the model), once per worker process."""
    return layer_table(arch, num_classes, input_size)


def run_trial(sampled: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function trainable."""
    # Tune runs the next trial in this same process: what the last one freed goes back to the OS first
    # (trainers/memory.py says why a reused process otherwise grows by gigabytes)
    release_freed_memory()
    freeze_startup_objects()  # the first trial: the imports; collections in this process then skip them
    reset_peak_rss()
    torch.set_num_threads(max(1, int(setup.cpus)))
    tracking.bound_http_retries()
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    resume = read_checkpoint(tune.get_checkpoint())
    # every MLflow request of the trial goes through a background thread: training never waits on the server
    log = RunLogger(tracking.lazy_client(setup.tracking_uri), sender=Sender(f"mlflow-{trial_id}"))
    log.open(setup.experiment_id, setup.parent_run_id, trial_id, trial_name, resume.run_id if resume else None)
    trial: _Trial | None = None
    try:
        trial = _Trial(setup, TrialSpec.resolve(setup.config, sampled), log)
        trial.run(resume)
    except SystemExit:  # Tune stops a trial (ASHA) by raising SystemExit inside tune.report
        if trial is None or not trial.ended:
            log.send("ending the run", tracking.end_run, Outcome.STOPPED, "stopped early by ASHA")
        raise
    except BaseException as exc:
        if trial is None or not trial.ended:
            log.send("ending the run", tracking.end_run, Outcome.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        log.close(CLOSE_TIMEOUT_S)  # a no-op when the trial closed it before its last report


class _Trial:
    """The steps of one trial, sharing its run logger, data and plan."""

    def __init__(self, setup: TrialSetup, spec: TrialSpec, log: RunLogger) -> None:
        self.setup = setup
        self.config: ExperimentConfig = setup.config
        self.spec = spec
        self.log = log
        self.ended = False
        # where the trial's time goes (logged at the end; benchmarks/tune_overhead.py reads it)
        self.started = time.perf_counter()
        self.training_started = 0.0
        self.reporting_seconds = 0.0
        self.last_checkpoint = -float("inf")
        self.rss_start_mb = rss_mb()
        self.latency_timed = ""  # how this attempt timed its latency; empty when it did not (a resumed attempt)

    def run(self, resume: Resume | None) -> None:
        """Load the data, allocate, train (from `resume` when given) and report every epoch to Tune and MLflow."""
        data = self._load_data()
        table, plan, model = self._allocate(data)
        latency = resume.latency_ms if resume else self._latency(model, plan)
        costs: dict[str, float] = {Metric.MACS: float(plan.effective.macs), Metric.PARAMS: float(plan.effective.params),
                 Metric.LATENCY_MS: latency}  # fmt: skip
        self._log_setup(plan, render_plan(plan, table), costs)  # into a run this attempt created only
        workers = max(0, int(self.setup.cpus) - 1)
        trainer = Trainer(model, data, dataclasses.replace(self.spec.recipe, workers=workers))
        if resume is not None:
            trainer.load_state(resume.state)
        self._tag_placement(str(trainer.device))
        epochs = trainer.config.epochs

        def report(metrics: Metrics, state: TrainState) -> None:
            entered = time.perf_counter()
            self.log.send_epoch(metrics, int(metrics[Metric.EPOCH]))  # queued: the server is never waited on
            last = int(metrics[Metric.EPOCH]) == epochs
            if last:
                self._finish(plan, trainer, metrics)
            result = {**metrics, ResultKey.ACCURACY: metrics[Metric.VAL_ACC], **costs, ResultKey.COMPLETE: int(last),
                      **self._lost()}  # fmt: skip
            self.reporting_seconds += time.perf_counter() - entered
            due = time.perf_counter() - self.last_checkpoint >= self.config.ray.checkpoint_every_s
            self._report(result, state if (last or due) else None, plan, latency)

        self.training_started = time.perf_counter()
        outcome = trainer.run(report)
        if outcome.status == Outcome.DIVERGED:  # the trainer's own status, named alike
            self.log.send("ending the run", tracking.end_run, Outcome.DIVERGED, outcome.reason)
            self.log.close(CLOSE_TIMEOUT_S)
            self.ended = True
            final = outcome.final
            tune.report(_plain({**final, ResultKey.ACCURACY: final.get(Metric.VAL_ACC, 0.0), **costs,
                                ResultKey.COMPLETE: 0, ResultKey.DIVERGED: 1, **self._lost()}))  # fmt: skip
        elif not self.ended:  # resumed after the last epoch's checkpoint: nothing left to train
            self._finish(plan, trainer, trainer.history[-1])
            last = trainer.history[-1]
            self._report({**last, ResultKey.ACCURACY: last[Metric.VAL_ACC], **costs, ResultKey.COMPLETE: 1,
                          **self._lost()}, trainer.state(), plan, latency)  # fmt: skip

    def _lost(self) -> dict[str, int]:
        """The flag a result carries once this attempt lost MLflow (the driver reports it and re-logs)."""
        return {ResultKey.TRACKING_LOST: 1} if self.log.lost else {}

    def _tag_placement(self, device: str) -> None:
        """Where this attempt runs (Ray node, host, device, process); a retry overwrites it and counts up."""
        tags: dict[str, str] = {Tag.NODE_ID: ray.get_runtime_context().get_node_id(), Tag.HOST: socket.gethostname(),
                Tag.DEVICE: device, Tag.WORKER_PID: str(os.getpid())}  # fmt: skip
        if self.latency_timed:  # a resumed attempt keeps the first attempt's tag
            tags[Tag.LATENCY_TIMED] = self.latency_timed

        def tag_attempt(client: MlflowClient, run_id: str) -> None:
            run = tracking.get_run(client, run_id)
            attempts = int(run.data.tags.get(Tag.ATTEMPTS, "0")) + 1
            tracking.set_tags(client, run_id, {**tags, Tag.ATTEMPTS: str(attempts)})

        self.log.send("tagging the run", tag_attempt)

    def _load_data(self) -> DataSet:
        return cached_dataset(data_request(self.config, "train"))

    def _allocate(self, data: DataSet) -> tuple[LayerTable, WidthPlan, torch.nn.Module]:
        """The plan and the model to train: built at the plan's widths, or the dense one with its masks.

        Mask methods score the very model that is trained (its seeded initialization), so a retried
        trial recomputes the same masks before its checkpoint is loaded.
        """
        table = cached_layer_table(self.config.model.arch, data.num_classes, data.image_shape[1])
        chosen, request, seed = method(self.spec.allocator), self.spec.request, self.spec.seed
        init = self.config.model.init
        if not chosen.needs_model:
            plan = realize(chosen.name, table, request, None).plan
            return table, plan, model_for_plan(plan, init, data, seed)
        dense = build_from_plan(dense_plan(table), seed=seed)
        batches = probe_batches(data, PROBE_BATCHES, PROBE_BATCH_SIZE, seed) if chosen.needs_data else ()
        result = realize(chosen.name, table, request, Probe(dense, batches, seed))
        if not chosen.masks:
            return table, result.plan, model_for_plan(result.plan, init, data, seed)
        apply_masks(dense, result.masks)
        return table, result.plan, dense

    def _latency(self, model: torch.nn.Module, plan: WidthPlan) -> float:
        """Latency (ms) at the configured batch size, runtime and device, timed once per plan per search
        (search/run/latency.py: a plan some trial of this search timed is not timed again); the weights do not
        matter for it."""
        objectives = self.config.objectives
        batch, runtime = objectives.latency_batch, objectives.latency_runtime
        device = latency_device(objectives.latency_device, self.spec.recipe.device)
        fingerprint = plan_fingerprint(plan, batch, runtime, device.type)
        self.latency_timed = f"in search: {describe_runtime(runtime, device)}, batch {batch}"
        return cached_latency(self.setup.parent_run_id, fingerprint, lambda: time_models(
            [model], [plan.input_shape], batch, IN_SEARCH_ROUNDS, runtime, device)[0])  # fmt: skip

    def _log_setup(self, plan: WidthPlan, widths_table: str, costs: dict[str, float]) -> None:
        """Hyperparameters, the plan (JSON + widths table) and the counted cost, once per run."""
        metrics = setup_metrics(plan, costs)
        if self.rss_start_mb is not None:
            metrics[Metric.WORKER_RSS_START_MB] = self.rss_start_mb
        log_setup(self.log, setup_params(self.config, self.spec, plan), metrics, plan, widths_table, only_new_run=True)

    def _finish(self, plan: WidthPlan, trainer: Trainer, last: Metrics) -> None:
        """Final weights (plan JSON + state_dict) and summary metrics; the run ends FINISHED."""
        now = time.perf_counter()
        timings: dict[str, float] = {
            Metric.TIME_SETUP_S: self.training_started - self.started,
            Metric.TIME_REPORTING_S: self.reporting_seconds,
            Metric.TIME_TRAINING_S: now - self.training_started - self.reporting_seconds,
        }
        if (peak := peak_rss_mb()) is not None:
            timings[Metric.WORKER_RSS_PEAK_MB] = peak
        log_final(self.log, plan, trainer.model.state_dict(), {Metric.FINAL_VAL_ACC: last[Metric.VAL_ACC], **timings},
                  int(last[Metric.EPOCH]), Preprocess.from_dataset(trainer.data))  # fmt: skip
        # before the last report: the driver reads the finished run right after it (and re-logs it from
        # Tune when this result says MLflow was lost)
        self.log.close(CLOSE_TIMEOUT_S)
        self.ended = True

    def _report(self, result: dict[str, Any], state: TrainState | None, plan: WidthPlan, latency: float) -> None:
        """tune.report, with a checkpoint (the loop state and this trial's run id) when `state` is given.

        Checkpoints are written at most every `ray.checkpoint_every_s` seconds (and at the last epoch):
        one per epoch of a short epoch costs more than the training it protects.
        """
        entered = time.perf_counter()
        result = _plain(result)
        if state is None:
            tune.report(result)
            self.reporting_seconds += time.perf_counter() - entered
            return
        self.last_checkpoint = entered
        folder = Path(tempfile.mkdtemp(prefix="precrop-ckpt-"))
        try:
            write_checkpoint_dir(folder, state, plan, self.log.run_id, latency)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            self.reporting_seconds += time.perf_counter() - entered


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    """A result with plain-string keys (schema names are StrEnum members) for Tune and its result files."""
    return {str(key): value for key, value in result.items()}
