"""Every name the search layer writes to MLflow or hands to Tune, and how an outcome ends a run.

MLflow tag, metric, param and artifact names, the keys of the results a trial reports to Tune, and the
one mapping from a trial's outcome to its MLflow run status. The string values are what existing MLflow
stores, Tune result files and users' queries hold: never change one, add a new name instead.
Every member is a `str` (StrEnum), so it can be used wherever a plain name is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Tag(StrEnum):
    """MLflow run tags."""

    ROLE = "precrop.role"  # a Role: the search's parent run or a trial's child run
    PARENT = "mlflow.parentRunId"  # MLflow's own: a child run's parent
    # the parent run of a search
    SEARCH = "precrop.search"  # the search's name, <config name>-<UTC time>
    SEARCH_DIR = "precrop.search_dir"  # its Tune directory
    CONFIG = "precrop.config"  # the (redacted) config, as JSON
    CONFIG_NAME = "precrop.config_name"
    STUDY = "precrop.study"  # a study's kind (granularity, mapping, baselines)
    OPTUNA_STORAGE = "precrop.optuna_storage"  # where the search's Optuna study is stored (a database URL)
    OPTUNA_STUDY = "precrop.optuna_study"  # the study's name in that storage
    # a trial's child run
    TRIAL_ID = "precrop.trial_id"
    OUTCOME = "precrop.outcome"  # an Outcome
    REASON = "precrop.reason"  # why a run did not finish
    ALLOCATOR = "precrop.allocator"
    NODE_ID = "precrop.node_id"  # where the latest attempt ran: Ray node, host, torch device
    HOST = "precrop.host"
    DEVICE = "precrop.device"
    WORKER_PID = "precrop.worker_pid"  # the trial process (Tune reuses it for later trials)
    ATTEMPTS = "precrop.attempts"  # how many attempts (retries, resumes) the trial took
    LATENCY_TIMED = "precrop.latency_timed"  # where and how the end-of-search latency was timed
    PARETO = "pareto"  # "true" on the runs of the front, "false" on the others
    WITHIN_LIMITS = "precrop.within_limits"  # "false" on a completed trial over a hard limit (constraints:)


# the tag a registered model version of `precrop export --register` carries: onnx or pt2 (torchscript before)
MODEL_VERSION_FORMAT_TAG = "format"
# the MLflow LoggedModel `precrop export --register` logs under a trial's run: export-onnx or export-pt2
EXPORT_MODEL_PREFIX = "export-"


class Role(StrEnum):
    """Values of the `precrop.role` tag."""

    SEARCH = "search"
    TRIAL = "trial"


class RunStatus(StrEnum):
    """MLflow run statuses (MLflow's own names)."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


# a run in one of these has not ended
ACTIVE_STATUSES = (RunStatus.RUNNING, RunStatus.SCHEDULED)


class Outcome(StrEnum):
    """Values of the `precrop.outcome` tag: how a trial ended."""

    COMPLETED = "completed"  # trained every epoch; its final model is logged
    STOPPED = "stopped"  # stopped early by the scheduler (ASHA)
    DIVERGED = "diverged"  # the loss became non-finite
    FAILED = "failed"  # raised an error (retries exhausted)
    INTERRUPTED = "interrupted"  # the search ended (Ctrl-C, a crash) with the trial open; resume continues it
    # shown for a run without the tag, never written
    RUNNING = "running"
    UNKNOWN = "unknown"


# the one outcome -> MLflow run status mapping: every run that ends gets its status from here
RUN_STATUS: Mapping[Outcome, RunStatus] = MappingProxyType({
    Outcome.COMPLETED: RunStatus.FINISHED,
    Outcome.STOPPED: RunStatus.KILLED,
    Outcome.INTERRUPTED: RunStatus.KILLED,
    Outcome.DIVERGED: RunStatus.FAILED,
    Outcome.FAILED: RunStatus.FAILED,
})  # fmt: skip


class Metric(StrEnum):
    """MLflow metric names that the search layer writes or reads by name (the trainer's other per-epoch
    metrics, train_loss and the like, are logged under the trainer's own names)."""

    EPOCH = "epoch"  # the trainer's epoch number (also the step of every per-epoch metric)
    VAL_ACC = "val_acc"  # the trainer's validation accuracy, per epoch
    # a trial's costs, at step 0
    MACS = "macs"
    PARAMS = "params"
    LATENCY_MS = "latency_ms"  # re-timed on the idle machine at the end of the search
    LATENCY_MS_IN_SEARCH = "latency_ms_in_search"  # the value timed while trials shared the machine
    MACS_FRACTION = "macs_fraction"
    PARAMS_FRACTION = "params_fraction"
    DENSE_MACS = "dense_macs"  # what the model executes (masked models keep the dense shapes)
    # a completed trial's summary, at its last epoch
    FINAL_VAL_ACC = "final_val_acc"
    TEST_ACC = "test_acc"  # front members and study cells only, at step 0
    TIME_SETUP_S = "time_setup_s"
    TIME_REPORTING_S = "time_reporting_s"
    TIME_TRAINING_S = "time_training_s"
    # the trial process's memory (Tune reuses it for the next trial): resident MiB when the trial started,
    # after the last one's memory was released, and the peak while it ran
    WORKER_RSS_START_MB = "worker_rss_start_mb"
    WORKER_RSS_PEAK_MB = "worker_rss_peak_mb"
    # the parent run's counts
    TRIALS = "trials"
    TRIALS_COMPLETED = "trials_completed"
    TRIALS_STOPPED = "trials_stopped"
    TRIALS_FAILED = "trials_failed"
    PARETO_SIZE = "pareto_size"
    TRIALS_OVER_LIMIT = "trials_over_limit"  # completed trials over a hard limit (constraints:)


# the cost objectives a search may minimize (`objectives.cost`): metric names, as plain strings
COST_METRICS: tuple[str, ...] = (Metric.MACS.value, Metric.PARAMS.value, Metric.LATENCY_MS.value)


class Param(StrEnum):
    """MLflow param names that are read back (a trial logs more: its whole recipe)."""

    ALLOCATOR = "allocator"
    BUDGET = "budget"
    SEED = "seed"
    VARIANT = "variant"
    OBJECTIVE = "objective"  # what synexp maximizes: layer or path
    GRANULARITY = "granularity"  # channel, weight or filter: what the method prunes
    SEARCH_DIR = "search_dir"  # the parent run's Tune directory


class Artifact(StrEnum):
    """MLflow artifact folders and files."""

    PLAN_DIR = "plan"  # a trial's plan: plan.json and widths.txt
    MODEL_DIR = "model"  # a completed trial's final model: plan.json and the weights
    EXPORT_DIR = "export"  # export/<format>/<file>: where `precrop export --register` put the bare file before
    # it logged MLflow models (EXPORT_MODEL_PREFIX); older runs still have it
    WIDTHS = "widths.txt"
    # the parent run of a search
    PARETO_PNG = "pareto.png"
    PARETO_CSV = "pareto.csv"
    PARETO_JSON = "pareto.json"
    # the parent run of a study (also written to its --out folder)
    STUDY_CSV = "study.csv"
    PAIRED_CSV = "paired.csv"
    STUDY_MD = "study.md"
    STUDY_PNG = "study.png"


STUDY_FILES = (Artifact.STUDY_CSV, Artifact.PAIRED_CSV, Artifact.STUDY_MD, Artifact.STUDY_PNG)


class ResultKey(StrEnum):
    """Keys of the results a trial reports to Tune, besides the trainer's epoch metrics (which include
    `epoch` and `val_acc`) and the costs (`macs`, `params`, `latency_ms`, under their metric names)."""

    EPOCH = "epoch"
    ACCURACY = "val_acc"  # the objective the searcher maximizes
    COMPLETE = "trial_complete"  # 1 in the report of the last epoch
    DIVERGED = "diverged"  # 1 in the last report of a trial whose loss became non-finite
    TRACKING_LOST = "tracking_lost"  # 1 once the trial can no longer log to MLflow (search/record/run_logger.py)
    # Tune's own, set for a result read back from a checkpoint
    TRAINING_ITERATION = "training_iteration"
    CHECKPOINT_DIR_NAME = "checkpoint_dir_name"


# the Optuna constraint on every told trial: > 0 (infeasible) for a trial stopped before its last epoch
UNTRAINED_CONSTRAINT = "untrained_fraction"
# the Optuna user attribute that names a trial's Tune trial id (the `precrop.trial_id` tag of its child run)
OPTUNA_TRIAL_ID_ATTR = Tag.TRIAL_ID.value
