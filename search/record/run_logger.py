"""A trial's MLflow child run, logged so that losing the tracking server never stops training.

A trial sends every request through `RunLogger.send`, which queues it for the trial's background
thread (search/record/sender.py): a server that is gone or silent delays no epoch, and gets what was
queued once it answers again. What the trial's end could not send is named by `lost`; Tune keeps every
result and checkpoint, and the driver (or `precrop reconcile` once the server is back) re-logs from them.
The driver and the reconciliation call requests directly (`RunLogger.call`).

What a trial's run logs (its setup, each epoch, its final model) is written here too, so that the trial
and the reconciliation (search/record/reconcile.py) log the same names in the same way.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, TRIAL_ID

from precrop.width.plan import WidthPlan
from search.record import tracking
from search.record.sender import Sender
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
    """MLflow requests for one run.

    `call` sends a request now and returns its answer; after the first failure the logger goes offline and
    `lost` says why (the driver and `precrop reconcile` use it). `send` is for a trial: with a `Sender`, the
    request is queued for its background thread, so training never waits on the server
    (search/record/sender.py); without one it is `call` without the answer.
    """

    def __init__(self, client: MlflowClient, run_id: str | None = None, strict: bool = False,
                 sender: Sender | None = None) -> None:  # fmt: skip
        self.client = client
        self.run_id = run_id
        self.strict = strict  # raise instead of going offline (reconciliation needs the server)
        self.sender = sender
        self.created = False  # whether `open` created the run (else it continues an earlier attempt's)
        self._lost = ""
        self._logged_steps: set[int] | None = None
        self._folders: list[Path] = []  # artifact folders written and not yet removed

    @property
    def lost(self) -> str:
        """Why some request did not reach the server ('' while all did, or are queued and being sent)."""
        return self._lost or (self.sender.lost if self.sender is not None else "")

    @property
    def online(self) -> bool:
        """Whether requests are still sent (the server has answered every one so far)."""
        return not self._lost and self.run_id is not None

    def call(self, what: str, request: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`request(client, run_id, *args)`, or None (and the logger goes offline) when it fails."""
        if not self.online:
            return None
        try:
            return request(self.client, self.run_id, *args, **kwargs)
        except tracking.TRACKING_FAILURES as exc:
            if self.strict:
                raise
            self._lost = f"{what}: {tracking.redact_uri(tracking.first_line(exc))}"
            return None

    def send(self, what: str, request: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """`request(client, run_id, *args)` on the sender's thread, in order (else now, as `call`)."""
        if self.sender is None:
            self.call(what, request, *args, **kwargs)
            return

        def queued() -> None:
            if self.run_id is not None:  # None: opening the run was given up, and so is the rest
                request(self.client, self.run_id, *args, **kwargs)

        self.sender.submit(what, queued)

    def send_if_created(self, what: str, request: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """`send`, for what only a run created by this attempt lacks (its params and plan)."""
        self.send(what, lambda client, run_id: request(client, run_id, *args, **kwargs) if self.created else None)

    def send_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        """Log one epoch's metrics at step `epoch`, unless the run holds that epoch already: a retry resumes
        from its last checkpoint, which may be epochs behind what the run has logged, and MLflow would append
        a second value at a logged step."""

        def log_new_epoch(client: MlflowClient, run_id: str) -> None:
            if self._logged_steps is None:
                self._logged_steps = set() if self.created else tracking.logged_steps(client, run_id, Metric.VAL_ACC)
            if epoch not in self._logged_steps:
                tracking.log_metrics(client, run_id, metrics, step=epoch)
                self._logged_steps.add(epoch)

        self.send(f"logging epoch {epoch}", log_new_epoch)

    def send_folder(
        self, what: str, write: Callable[[Path], object], artifact_path: str, only_new_run: bool = False
    ) -> None:
        """Write files into a new folder now (`write(folder)`), then `send` them as artifacts under
        `artifact_path`; the folder is removed once sent, or when `close` gives up on it."""
        folder = Path(tempfile.mkdtemp(prefix="precrop-artifacts-"))

        def upload(client: MlflowClient, run_id: str) -> None:
            if only_new_run and not self.created:
                return
            tracking.log_artifacts(client, run_id, str(folder), artifact_path)
            shutil.rmtree(folder, ignore_errors=True)

        try:
            write(folder)
            self.send(what, upload)
        finally:
            if self.sender is None:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                self._folders.append(folder)

    def open(self, experiment: str, parent_id: str, trial_id: str, name: str, known: str | None = None) -> None:
        """Continue the trial's earlier run (`known`, from its checkpoint, else found by its trial-id tag)
        or create it (then `created`); on the sender's thread when there is one. A retried attempt looks
        for the run first, so a creation whose answer was lost does not make a second run."""

        def open_run() -> None:
            found = known or tracking.find_trial_run(self.client, experiment, parent_id, trial_id)
            if found is not None:
                tracking.reopen_run(self.client, found)
                self.run_id = found
                return
            self.run_id = tracking.create_trial_run(self.client, experiment, parent_id, trial_id, name)
            self.created = True

        if self.sender is not None:
            self.sender.submit("opening the run", open_run)
            return
        try:
            open_run()
        except tracking.TRACKING_FAILURES as exc:
            self._lost = f"opening the run: {tracking.redact_uri(tracking.first_line(exc))}"

    def close(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the queued requests to be sent; True when all were (and none
        failed for good). Without a sender: whether every request so far reached the server."""
        if self.sender is not None:
            self.sender.close(timeout)
        for folder in self._folders:  # what was sent is gone already; the rest stays in Tune for reconcile
            shutil.rmtree(folder, ignore_errors=True)
        self._folders.clear()
        return not self.lost


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


def log_setup(
    log: RunLogger, params: dict[str, Any], metrics: dict[str, float], plan: WidthPlan, widths: str,
    only_new_run: bool = False,
) -> None:  # fmt: skip
    """Log a run's setup: params, step-0 cost metrics, the allocator tag and the plan artifacts; with
    `only_new_run`, only into a run this attempt created (a retry's run has them)."""
    send = log.send_if_created if only_new_run else log.send
    send("logging params", tracking.log_params, params)
    send("logging costs", tracking.log_metrics, metrics, step=0)
    send("tagging the run", tracking.set_tags, {Tag.ALLOCATOR: str(params[Param.ALLOCATOR])})

    def write_plan(folder: Path) -> None:
        (folder / PLAN_FILE).write_text(plan.to_json(indent=2) + "\n")
        (folder / Artifact.WIDTHS).write_text(widths + "\n")

    log.send_folder("logging the plan", write_plan, Artifact.PLAN_DIR, only_new_run)


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
    log.send_folder("logging the model", lambda folder: save_weights(folder, plan, weights, preprocess),
                    Artifact.MODEL_DIR)  # fmt: skip
    log.send("logging the summary", tracking.log_metrics, summary, step=epoch)
    log.send("ending the run", tracking.end_run, Outcome.COMPLETED)
