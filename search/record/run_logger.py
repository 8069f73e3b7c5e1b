"""A trial's MLflow child run, logged so that losing the tracking server never stops training.

Every request goes through `RunLogger.call`. The first one that fails (server gone, database locked
for good) switches the logger off for the rest of the attempt: training goes on, Tune keeps every
result and checkpoint, and the driver (or `precrop reconcile` once the server is back) re-logs what
the run missed from them. Retrying each request would stall every epoch for MLflow's back-off.

What a trial's run logs (its setup, each epoch, its final model) is written here too, so that the trial
and the reconciliation (search/record/reconcile.py) log the same names in the same way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, TRIAL_ID

from precrop.width.plan import WidthPlan
from search.record import tracking
from search.spec.config import ExperimentConfig
from search.spec.schema import Artifact, Metric, Outcome, Param, ResultKey, Tag
from search.spec.space import TrialSpec
from trainers.checkpoint import PLAN_FILE, Preprocess, save_weights

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

T = TypeVar("T")
# what a Tune result holds besides the trainer's epoch metrics
RESULT_EXTRAS = frozenset(
    {*AUTO_RESULT_KEYS, DONE, TRIAL_ID, EXPERIMENT_TAG, Metric.MACS, Metric.PARAMS, Metric.LATENCY_MS,
     ResultKey.COMPLETE, ResultKey.DIVERGED, ResultKey.TRACKING_LOST}
)  # fmt: skip


class RunLogger:
    """MLflow calls for one run; after the first failure they are skipped and `lost` says why."""

    def __init__(self, client: MlflowClient, run_id: str | None = None, strict: bool = False) -> None:
        self.client = client
        self.run_id = run_id
        self.strict = strict  # raise instead of going offline (reconciliation needs the server)
        self.lost = ""

    @property
    def online(self) -> bool:
        """Whether requests are still sent (the server has answered every one so far)."""
        return not self.lost and self.run_id is not None

    def call(self, what: str, request: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`request(client, run_id, *args)`, or None (and the logger goes offline) when it fails."""
        if not self.online:
            return None
        try:
            return request(self.client, self.run_id, *args, **kwargs)
        except tracking.TRACKING_FAILURES as exc:
            if self.strict:
                raise
            self.lost = f"{what}: {tracking.redact_uri(tracking.first_line(exc))}"
            return None

    def open(self, experiment: str, parent_id: str, trial_id: str, name: str, known: str | None = None) -> bool:
        """Continue the trial's earlier run (`known`, from its checkpoint, else found by its trial-id tag)
        or create it; True when it was created now."""
        try:
            found = known or tracking.find_trial_run(self.client, experiment, parent_id, trial_id)
            if found is not None:
                tracking.reopen_run(self.client, found)
                self.run_id = found
                return False
            self.run_id = tracking.create_trial_run(self.client, experiment, parent_id, trial_id, name)
            return True
        except tracking.TRACKING_FAILURES as exc:
            self.lost = f"opening the run: {tracking.redact_uri(tracking.first_line(exc))}"
            return False


def setup_params(config: ExperimentConfig, spec: TrialSpec, plan: WidthPlan) -> dict[str, Any]:
    """The hyperparameters a trial's run logs once: what was allocated, how, and the training recipe."""
    request, recipe = spec.request, spec.recipe.to_dict()
    return {
        "arch": config.model.arch, "dataset": config.data.name, Param.ALLOCATOR: spec.allocator,
        Param.BUDGET: spec.point.budget, "budget_metric": config.space.budget_metric, "expand": request.expand,
        Param.VARIANT: request.variant, Param.OBJECTIVE: request.objective, "divisor": request.divisor,
        "min_width": request.min_width,
        Param.SEED: spec.seed, Param.GRANULARITY: plan.granularity,
        "recipe": {k: v for k, v in recipe.items() if k not in ("device", "workers")},
    }  # fmt: skip


def setup_metrics(plan: WidthPlan, costs: Mapping[str, float]) -> dict[str, float]:
    """The cost metrics a trial's run logs at step 0: the objectives and the fractions of the dense model."""
    base = plan.base
    return {
        **costs,
        Metric.MACS_FRACTION: plan.effective.macs / base.macs,
        Metric.PARAMS_FRACTION: plan.effective.params / base.params,
        # what the model executes: masked models keep the dense shapes (and the dense latency)
        Metric.DENSE_MACS: float(plan.counted.macs),
    }


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The trainer's own metrics of one epoch, out of a Tune result (which adds costs and bookkeeping)."""
    # "/" marks a nested field flattened by Tune's result files (config/lr, ...): never an epoch metric
    return {k: float(v) for k, v in result.items() if k not in RESULT_EXTRAS and "/" not in k
            and isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


def log_setup(log: RunLogger, params: dict[str, Any], metrics: dict[str, float], plan: WidthPlan, widths: str) -> None:
    """Log a run's setup: params, step-0 cost metrics, the allocator tag and the plan artifacts."""
    log.call("logging params", tracking.log_params, params)
    log.call("logging costs", tracking.log_metrics, metrics, step=0)
    log.call("tagging the run", tracking.set_tags, {Tag.ALLOCATOR: str(params[Param.ALLOCATOR])})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / PLAN_FILE).write_text(plan.to_json(indent=2) + "\n")
        (folder / Artifact.WIDTHS).write_text(widths + "\n")
        log.call("logging the plan", tracking.log_artifacts, tmp, Artifact.PLAN_DIR)


def log_final(
    log: RunLogger,
    plan: WidthPlan,
    weights: Mapping[str, torch.Tensor],
    summary: dict[str, float],
    epoch: int,
    preprocess: Preprocess | None = None,
) -> None:
    """Log a completed run's model (plan JSON + state_dict, and preprocess.json when given: what
    `precrop export` puts into the exported graph) and summary metrics, and end it FINISHED."""
    with tempfile.TemporaryDirectory() as tmp:
        save_weights(Path(tmp), plan, weights, preprocess)
        log.call("logging the model", tracking.log_artifacts, tmp, Artifact.MODEL_DIR)
    log.call("logging the summary", tracking.log_metrics, summary, step=epoch)
    log.call("ending the run", tracking.end_run, Outcome.COMPLETED)
