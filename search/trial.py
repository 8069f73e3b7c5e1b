"""One Ray Tune trial: allocate widths, build the cropped model, train it, log it to its MLflow child run.

Reports go through `ray.tune.report` once per epoch, each with a checkpoint (the loop's resume state and
the trial's MLflow run id) and every objective, so the searcher and ASHA always see complete results.
A retried or resumed trial finds its run id in the checkpoint (or, if it died before the first one, by
its trial-id tag) and continues that run instead of opening a second one.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow import MlflowClient
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from precrop.methods.masks import Probe, apply_masks
from precrop.methods.plan_report import render_plan
from precrop.methods.registry import method, realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import dense_plan
from precrop.width.costmodel import LayerTable
from precrop.width.plan import WidthPlan
from search import tracking
from search.config import ExperimentConfig
from search.latency import IN_SEARCH_ROUNDS, cached_latency, plan_fingerprint, time_models
from search.run_logger import RunLogger
from search.searcher import ACCURACY, COMPLETE_KEY, DIVERGED_KEY, TRACKING_LOST_KEY
from search.space import TrialPoint
from trainers.batches import PROBE_BATCH_SIZE, PROBE_BATCHES, probe_batches
from trainers.checkpoint import PLAN_FILE, load_train_state, save_train_state, save_weights
from trainers.datasets import DataRequest, DataSet, load_dataset
from trainers.loop import Metrics, Trainer, TrainState

META_FILE = "trial.json"
NODE_TAG = "precrop.node_id"
HOST_TAG = "precrop.host"
DEVICE_TAG = "precrop.device"
ATTEMPTS_TAG = "precrop.attempts"
# what a Tune result holds besides the trainer's epoch metrics
RESULT_EXTRAS = frozenset(
    {*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_tag", "macs", "params", "latency_ms", COMPLETE_KEY,
     DIVERGED_KEY, TRACKING_LOST_KEY}
)  # fmt: skip


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled point (passed with `tune.with_parameters`)."""

    config: ExperimentConfig
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    cpus: float


@dataclass
class Resume:
    """What a checkpoint of this trial holds."""

    state: TrainState
    run_id: str | None
    latency_ms: float
    plan: WidthPlan | None = None  # absent from checkpoints written before plans were saved in them


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
    torch.set_num_threads(max(1, int(setup.cpus)))
    tracking.bound_http_retries()
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    resume = read_checkpoint(tune.get_checkpoint())
    log = RunLogger(MlflowClient(tracking_uri=setup.tracking_uri))
    known = resume.run_id if resume else None
    fresh = log.open(setup.experiment_id, setup.parent_run_id, trial_id, trial_name, known)
    trial = _Trial(setup, TrialPoint.from_config(sampled), log)
    try:
        trial.run(resume, fresh)
    except SystemExit:  # Tune stops a trial (ASHA) by raising SystemExit inside tune.report
        if not trial.ended:
            log.call("ending the run", tracking.end_run, "KILLED", "stopped", "stopped early by ASHA")
        raise
    except BaseException as exc:
        if not trial.ended:
            log.call("ending the run", tracking.end_run, "FAILED", "failed", f"{type(exc).__name__}: {exc}")
        raise


def setup_params(config: ExperimentConfig, point: TrialPoint, plan: WidthPlan, seed: int) -> dict[str, Any]:
    """The hyperparameters a trial's run logs once: what was allocated, how, and the training recipe."""
    space = config.space
    recipe = point.train_config(space, seed, 0).to_dict()
    return {
        "arch": config.model.arch, "dataset": config.data.name, "allocator": point.allocator,
        "budget": point.budget, "budget_metric": space.budget_metric, "expand": space.expand,
        "variant": point.variant or space.variant, "divisor": space.divisor, "min_width": space.min_width,
        "seed": seed, "granularity": plan.granularity,
        "recipe": {k: v for k, v in recipe.items() if k not in ("device", "workers")},
    }  # fmt: skip


def setup_metrics(plan: WidthPlan, costs: dict[str, float]) -> dict[str, float]:
    """The cost metrics a trial's run logs at step 0: the objectives and the fractions of the dense model."""
    base = plan.base
    return {
        **costs,
        "macs_fraction": plan.effective.macs / base.macs,
        "params_fraction": plan.effective.params / base.params,
        # what the model executes: masked models keep the dense shapes (and the dense latency)
        "dense_macs": float(plan.counted.macs),
    }


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trainer's own metrics of one epoch, out of a Tune result (which adds costs and bookkeeping)."""
    # "/" marks a nested field flattened by Tune's result files (config/lr, ...): never an epoch metric
    return {k: float(v) for k, v in result.items() if k not in RESULT_EXTRAS and "/" not in k
            and isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


class _Trial:
    """The steps of one trial, sharing its run logger, data and plan."""

    def __init__(self, setup: TrialSetup, point: TrialPoint, log: RunLogger) -> None:
        self.setup = setup
        self.config: ExperimentConfig = setup.config
        self.point = point
        self.log = log
        self.ended = False
        # where the trial's time goes (logged at the end; benchmarks/tune_overhead.py reads it)
        self.started = time.perf_counter()
        self.training_started = 0.0
        self.reporting_seconds = 0.0
        self.last_checkpoint = -float("inf")

    def run(self, resume: Resume | None, fresh: bool) -> None:
        data = self._load_data()
        table, plan, model = self._allocate(data)
        latency = resume.latency_ms if resume else self._latency(model, plan)
        costs = {"macs": float(plan.effective.macs), "params": float(plan.effective.params), "latency_ms": latency}
        if fresh:
            self._log_setup(plan, render_plan(plan, table), costs)
        workers = max(0, int(self.setup.cpus) - 1)
        trainer = Trainer(model, data, self.point.train_config(self.config.space, self.seed, workers))
        if resume is not None:
            trainer.load_state(resume.state)
        self._tag_placement(str(trainer.device))
        epochs = trainer.config.epochs

        def report(metrics: Metrics, state: TrainState) -> None:
            entered = time.perf_counter()
            self.log.call("logging metrics", tracking.log_metrics, metrics, step=int(metrics["epoch"]))
            last = int(metrics["epoch"]) == epochs
            if last:
                self._finish(plan, trainer, metrics)
            result = {**metrics, ACCURACY: metrics["val_acc"], **costs, COMPLETE_KEY: int(last), **self._lost()}
            self.reporting_seconds += time.perf_counter() - entered
            due = time.perf_counter() - self.last_checkpoint >= self.config.ray.checkpoint_every_s
            self._report(result, state if (last or due) else None, plan, latency)

        self.training_started = time.perf_counter()
        outcome = trainer.run(report)
        if outcome.status == "diverged":
            self.log.call("ending the run", tracking.end_run, "FAILED", "diverged", outcome.reason)
            self.ended = True
            final = outcome.final
            tune.report({**final, ACCURACY: final.get("val_acc", 0.0), **costs, COMPLETE_KEY: 0, DIVERGED_KEY: 1,
                         **self._lost()})  # fmt: skip
        elif not self.ended:  # resumed after the last epoch's checkpoint: nothing left to train
            self._finish(plan, trainer, trainer.history[-1])
            self._report({**trainer.history[-1], ACCURACY: trainer.history[-1]["val_acc"], **costs,
                          COMPLETE_KEY: 1, **self._lost()}, trainer.state(), plan, latency)  # fmt: skip

    def _lost(self) -> dict[str, int]:
        """The flag a result carries once this attempt lost MLflow (the driver reports it and re-logs)."""
        return {TRACKING_LOST_KEY: 1} if self.log.lost else {}

    def _tag_placement(self, device: str) -> None:
        """Where this attempt runs (Ray node, host, device); a retry elsewhere overwrites it and counts up."""
        run = self.log.call("reading the run", lambda client, run_id: client.get_run(run_id))
        attempts = int(run.data.tags.get(ATTEMPTS_TAG, "0")) + 1 if run is not None else 1
        tags = {NODE_TAG: ray.get_runtime_context().get_node_id(), HOST_TAG: socket.gethostname(),
                DEVICE_TAG: device, ATTEMPTS_TAG: str(attempts)}  # fmt: skip
        self.log.call("tagging the run", tracking.set_tags, tags)

    def _load_data(self) -> DataSet:
        data = self.config.data
        request = DataRequest(
            data.name, data_dir=data.data_dir, val_fraction=data.val_fraction, seed=self.config.search.seed,
            image_size=data.image_size, resident=data.resident, download=data.download, train_subset=data.train_subset,
        )  # fmt: skip
        return cached_dataset(request)

    @property
    def seed(self) -> int:
        """The point's own seed (studies repeat a point over seeds), else the search's."""
        return self.point.seed if self.point.seed is not None else self.config.search.seed

    def _allocate(self, data: DataSet) -> tuple[LayerTable, WidthPlan, torch.nn.Module]:
        """The plan and the model to train: built at the plan's widths, or the dense one with its masks.

        Mask methods score the very model that is trained (its seeded initialization), so a retried
        trial recomputes the same masks before its checkpoint is loaded.
        """
        table = cached_layer_table(self.config.model.arch, data.num_classes, data.image_shape[1])
        spec = method(self.point.allocator)
        request = self.point.allocation_request(self.config.space)
        if not spec.needs_model:
            plan = realize(spec.name, table, request, None).plan
            return table, plan, build_from_plan(plan, seed=self.seed)
        dense = build_from_plan(dense_plan(table), seed=self.seed)
        batches = probe_batches(data, PROBE_BATCHES, PROBE_BATCH_SIZE, self.seed) if spec.needs_data else ()
        result = realize(spec.name, table, request, Probe(dense, batches, self.seed))
        if not spec.masks:
            return table, result.plan, build_from_plan(result.plan, seed=self.seed)
        apply_masks(dense, result.masks)
        return table, result.plan, dense

    def _latency(self, model: torch.nn.Module, plan: WidthPlan) -> float:
        """CPU latency (ms) at the configured batch size, timed once per plan per search (search/latency.py:
        a plan some trial of this search timed is not timed again); the weights do not matter for it."""
        batch = self.config.objectives.latency_batch
        fingerprint = plan_fingerprint(plan, batch)
        return cached_latency(self.setup.parent_run_id, fingerprint,
                              lambda: time_models([model], [plan.input_shape], batch, IN_SEARCH_ROUNDS)[0])  # fmt: skip

    def _log_setup(self, plan: WidthPlan, widths_table: str, costs: dict[str, float]) -> None:
        """Hyperparameters, the plan (JSON + widths table) and the counted cost, once per run."""
        log_setup(self.log, setup_params(self.config, self.point, plan, self.seed), setup_metrics(plan, costs),
                  plan, widths_table)  # fmt: skip

    def _finish(self, plan: WidthPlan, trainer: Trainer, last: Metrics) -> None:
        """Final weights (plan JSON + state_dict) and summary metrics; the run ends FINISHED."""
        now = time.perf_counter()
        timings = {
            "time_setup_s": self.training_started - self.started,
            "time_reporting_s": self.reporting_seconds,
            "time_training_s": now - self.training_started - self.reporting_seconds,
        }
        log_final(self.log, plan, trainer.model.state_dict(), {"final_val_acc": last["val_acc"], **timings},
                  int(last["epoch"]))  # fmt: skip
        self.ended = True

    def _report(self, result: dict[str, Any], state: TrainState | None, plan: WidthPlan, latency: float) -> None:
        """tune.report, with a checkpoint (the loop state and this trial's run id) when `state` is given.

        Checkpoints are written at most every `ray.checkpoint_every_s` seconds (and at the last epoch):
        one per epoch of a short epoch costs more than the training it protects.
        """
        entered = time.perf_counter()
        if state is None:
            tune.report(result)
            self.reporting_seconds += time.perf_counter() - entered
            return
        self.last_checkpoint = entered
        folder = Path(tempfile.mkdtemp(prefix="precrop-ckpt-"))
        try:
            save_train_state(folder, state)
            (folder / PLAN_FILE).write_text(plan.to_json())
            (folder / META_FILE).write_text(json.dumps({"run_id": self.log.run_id, "latency_ms": latency}))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            self.reporting_seconds += time.perf_counter() - entered


def read_checkpoint(checkpoint: tune.Checkpoint | None) -> Resume | None:
    """What a trial's checkpoint holds (None for none): loop state, run id, latency and plan.

    A checkpoint that storage no longer holds (Tune's saved state can name one it already deleted: see
    search/checkpoints.py) gives way to the newest readable checkpoint of the same trial; None if none is.
    """
    from search.checkpoints import usable

    found = usable(checkpoint, read_checkpoint_dir) if checkpoint is not None else None
    return found[1] if found else None


def read_checkpoint_dir(checkpoint: tune.Checkpoint) -> Resume | None:
    """What this checkpoint directory holds (None without a loop state); raises when its files are unreadable."""
    with checkpoint.as_directory() as folder:
        root = Path(folder)
        state = load_train_state(root)
        meta = json.loads((root / META_FILE).read_text())
        plan = WidthPlan.from_json((root / PLAN_FILE).read_text()) if (root / PLAN_FILE).is_file() else None
    if state is None:
        return None
    run_id = meta.get("run_id")
    return Resume(state, str(run_id) if run_id else None, float(meta["latency_ms"]), plan)


def log_setup(log: RunLogger, params: dict[str, Any], metrics: dict[str, float], plan: WidthPlan, widths: str) -> None:
    """Log a run's setup: params, step-0 cost metrics, the allocator tag and the plan artifacts."""
    log.call("logging params", tracking.log_params, params)
    log.call("logging costs", tracking.log_metrics, metrics, step=0)
    log.call("tagging the run", tracking.set_tags, {"precrop.allocator": str(params["allocator"])})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / PLAN_FILE).write_text(plan.to_json(indent=2) + "\n")
        (folder / "widths.txt").write_text(widths + "\n")
        log.call("logging the plan", lambda client, run_id: client.log_artifacts(run_id, tmp, artifact_path="plan"))


def log_final(log: RunLogger, plan: WidthPlan, weights: dict[str, Any], summary: dict[str, float], epoch: int) -> None:
    """Log a completed run's model (plan JSON + state_dict) and summary metrics, and end it FINISHED."""
    with tempfile.TemporaryDirectory() as tmp:
        save_weights(Path(tmp), plan, weights)
        log.call("logging the model", lambda client, run_id: client.log_artifacts(run_id, tmp, artifact_path="model"))
    log.call("logging the summary", tracking.log_metrics, summary, step=epoch)
    log.call("ending the run", tracking.end_run, "FINISHED", "completed")
