"""One Ray Tune trial: allocate widths, build the cropped model, train it, log it to its MLflow child run.

Reports go through `ray.tune.report` once per epoch, each with a checkpoint (the loop's resume state and
the trial's MLflow run id) and every objective, so the searcher and ASHA always see complete results.
A retried or resumed trial finds its run id in the checkpoint (or, if it died before the first one, by
its trial-id tag) and continues that run instead of opening a second one.
"""

from __future__ import annotations

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

from precrop.allocate import dense_plan
from precrop.allocate_cli import render_plan
from precrop.build import build_from_plan, layer_table
from precrop.costmodel import LayerTable
from precrop.masks import Probe, apply_masks
from precrop.methods import method, realize
from precrop.plan import WidthPlan
from search import tracking
from search.config import ExperimentConfig
from search.searcher import ACCURACY, COMPLETE_KEY, DIVERGED_KEY
from search.space import TrialPoint
from trainers.batches import probe_batches
from trainers.checkpoint import load_train_state, save_model, save_train_state
from trainers.datasets import DataRequest, DataSet, load_dataset
from trainers.loop import Metrics, Trainer, TrainState
from trainers.measure import measure_latency

META_FILE = "trial.json"
NODE_TAG = "precrop.node_id"
HOST_TAG = "precrop.host"
DEVICE_TAG = "precrop.device"
ATTEMPTS_TAG = "precrop.attempts"
# what data-driven methods (SNIP, GraSP, PFS, PruneNet) look at: a few augmented training batches
PROBE_BATCHES = 8
PROBE_BATCH_SIZE = 64


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
    run_id: str
    latency_ms: float


def run_trial(sampled: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function trainable."""
    torch.set_num_threads(max(1, int(setup.cpus)))
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    resume = _read_checkpoint(tune.get_checkpoint())
    client = MlflowClient(tracking_uri=setup.tracking_uri)
    run_id = resume.run_id if resume else None
    run_id = run_id or tracking.find_trial_run(client, setup.experiment_id, setup.parent_run_id, trial_id)
    if run_id is None:
        run_id = tracking.create_trial_run(client, setup.experiment_id, setup.parent_run_id, trial_id, trial_name)
        fresh = True
    else:
        tracking.reopen_run(client, run_id)
        fresh = False
    trial = _Trial(setup, TrialPoint.from_config(sampled), client, run_id)
    try:
        trial.run(resume, fresh)
    except SystemExit:  # Tune stops a trial (ASHA) by raising SystemExit inside tune.report
        if not trial.ended:
            tracking.end_run(client, run_id, "KILLED", "stopped", "stopped early by ASHA")
        raise
    except BaseException as exc:
        if not trial.ended:
            tracking.end_run(client, run_id, "FAILED", "failed", f"{type(exc).__name__}: {exc}")
        raise


class _Trial:
    """The steps of one trial, sharing its run id, data and plan."""

    def __init__(self, setup: TrialSetup, point: TrialPoint, client: MlflowClient, run_id: str) -> None:
        self.setup = setup
        self.config: ExperimentConfig = setup.config
        self.point = point
        self.client = client
        self.run_id = run_id
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
            tracking.log_metrics(self.client, self.run_id, metrics, step=int(metrics["epoch"]))
            last = int(metrics["epoch"]) == epochs
            if last:
                self._finish(plan, trainer, metrics)
            result = {**metrics, ACCURACY: metrics["val_acc"], **costs, COMPLETE_KEY: int(last)}
            self.reporting_seconds += time.perf_counter() - entered
            due = time.perf_counter() - self.last_checkpoint >= self.config.ray.checkpoint_every_s
            self._report(result, state if (last or due) else None, latency)

        self.training_started = time.perf_counter()
        outcome = trainer.run(report)
        if outcome.status == "diverged":
            tracking.end_run(self.client, self.run_id, "FAILED", "diverged", outcome.reason)
            self.ended = True
            final = outcome.final
            tune.report({**final, ACCURACY: final.get("val_acc", 0.0), **costs, COMPLETE_KEY: 0, DIVERGED_KEY: 1})
        elif not self.ended:  # resumed after the last epoch's checkpoint: nothing left to train
            self._finish(plan, trainer, trainer.history[-1])
            self._report({**trainer.history[-1], ACCURACY: trainer.history[-1]["val_acc"], **costs,
                          COMPLETE_KEY: 1}, trainer.state(), latency)  # fmt: skip

    def _tag_placement(self, device: str) -> None:
        """Where this attempt runs (Ray node, host, device); a retry elsewhere overwrites it and counts up."""
        attempts = int(self.client.get_run(self.run_id).data.tags.get(ATTEMPTS_TAG, "0")) + 1
        tags = {NODE_TAG: ray.get_runtime_context().get_node_id(), HOST_TAG: socket.gethostname(),
                DEVICE_TAG: device, ATTEMPTS_TAG: str(attempts)}  # fmt: skip
        tracking.set_tags(self.client, self.run_id, tags)

    def _load_data(self) -> DataSet:
        data = self.config.data
        request = DataRequest(
            data.name, data_dir=data.data_dir, val_fraction=data.val_fraction, seed=self.config.search.seed,
            image_size=data.image_size, resident=data.resident, download=data.download, train_subset=data.train_subset,
        )  # fmt: skip
        return load_dataset(request)

    @property
    def seed(self) -> int:
        """The point's own seed (studies repeat a point over seeds), else the search's."""
        return self.point.seed if self.point.seed is not None else self.config.search.seed

    def _allocate(self, data: DataSet) -> tuple[LayerTable, WidthPlan, torch.nn.Module]:
        """The plan and the model to train: built at the plan's widths, or the dense one with its masks.

        Mask methods score the very model that is trained (its seeded initialization), so a retried
        trial recomputes the same masks before its checkpoint is loaded.
        """
        table = layer_table(self.config.model.arch, data.num_classes, data.image_shape[1])
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
        """Median CPU latency (ms) at the configured batch size; the weights do not matter for it."""
        batch = self.config.objectives.latency_batch
        return measure_latency(model, plan.input_shape, batch, "cpu", max_seconds=2.0).median_ms

    def _log_setup(self, plan: WidthPlan, widths_table: str, costs: dict[str, float]) -> None:
        """Hyperparameters, the plan (JSON + widths table) and the counted cost, once per run."""
        space = self.config.space
        recipe = self.point.train_config(space, self.seed, 0).to_dict()
        params = {
            "arch": self.config.model.arch, "dataset": self.config.data.name, "allocator": self.point.allocator,
            "budget": self.point.budget, "budget_metric": space.budget_metric, "expand": space.expand,
            "variant": self.point.variant or space.variant, "divisor": space.divisor, "min_width": space.min_width,
            "seed": self.seed, "granularity": plan.granularity,
            "recipe": {k: v for k, v in recipe.items() if k not in ("device", "workers")},
        }  # fmt: skip
        tracking.log_params(self.client, self.run_id, params)
        base = plan.base
        fractions = {
            "macs_fraction": plan.effective.macs / base.macs,
            "params_fraction": plan.effective.params / base.params,
            # what the model executes: masked models keep the dense shapes (and the dense latency)
            "dense_macs": float(plan.counted.macs),
        }
        tracking.log_metrics(self.client, self.run_id, {**costs, **fractions}, step=0)
        tracking.set_tags(self.client, self.run_id, {"precrop.allocator": self.point.allocator})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "plan.json").write_text(plan.to_json(indent=2) + "\n")
            (folder / "widths.txt").write_text(widths_table + "\n")
            self.client.log_artifacts(self.run_id, tmp, artifact_path="plan")

    def _finish(self, plan: WidthPlan, trainer: Trainer, last: Metrics) -> None:
        """Final weights (plan JSON + state_dict) and summary metrics; the run ends FINISHED."""
        with tempfile.TemporaryDirectory() as tmp:
            save_model(Path(tmp), plan, trainer.model)
            self.client.log_artifacts(self.run_id, tmp, artifact_path="model")
        now = time.perf_counter()
        timings = {
            "time_setup_s": self.training_started - self.started,
            "time_reporting_s": self.reporting_seconds,
            "time_training_s": now - self.training_started - self.reporting_seconds,
        }
        summary = {"final_val_acc": last["val_acc"], **timings}
        tracking.log_metrics(self.client, self.run_id, summary, step=int(last["epoch"]))
        tracking.end_run(self.client, self.run_id, "FINISHED", "completed")
        self.ended = True

    def _report(self, result: dict[str, Any], state: TrainState | None, latency: float) -> None:
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
            (folder / META_FILE).write_text(json.dumps({"run_id": self.run_id, "latency_ms": latency}))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            self.reporting_seconds += time.perf_counter() - entered


def _read_checkpoint(checkpoint: tune.Checkpoint | None) -> Resume | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        state = load_train_state(Path(folder))
        meta = json.loads((Path(folder) / META_FILE).read_text())
    if state is None:
        return None
    return Resume(state=state, run_id=str(meta["run_id"]), latency_ms=float(meta["latency_ms"]))
