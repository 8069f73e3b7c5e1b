"""Experiment config: the frozen sections a YAML config is parsed into, their defaults and bounds.

Every section is a frozen dataclass whose fields are the only keys allowed. Reading a YAML file (with
`--set key.path=value` overrides) is search/spec/parse.py; the range checks are search/spec/validate.py;
where a search keeps its records is search/spec/locations.py. Ranges are written `[low, high]`; `[v, v]`
(or a bare number) fixes a value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from precrop.errors import UserError
from search.spec.schema import COST_METRICS, Metric

COST_OBJECTIVES = COST_METRICS
SAMPLERS = ("tpe", "nsga2")
# early-stopping rules: Pareto-ranked rungs on (val_acc, cost) (search/run/scheduler.py), or Ray's ASHA on val_acc
ASHA_MODES = ("pareto", "accuracy")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STORAGE_ENV = "PRECROP_STORAGE_PATH"
# search.optuna_storage: "auto" (this variable when set, else a sqlite file beside a local MLflow store), "none"
OPTUNA_STORAGE_ENV = "PRECROP_OPTUNA_STORAGE"
OPTUNA_STORAGE_WORDS = ("auto", "none")
OPTUNA_BACKENDS = ("sqlite", "postgresql", "mysql")  # the databases Optuna's RDBStorage supports
# ranges validate() enforces beyond the types (README's config table and docs/security.md list them)
MAX_SEED = 2**32 - 1  # numpy's seed range, which Optuna's samplers use
MIN_CPU, MAX_CPU = 0.1, 1024  # per trial; below 0.1 Ray would pack more than 10 trials onto one CPU
MIN_GPU = 0.01  # per trial, when not 0: at most 100 trials share one GPU
MAX_COUNT = {"search.trials": 100_000, "search.concurrency": 10_000, "space.epochs": 100_000,
             "space.divisor": 4096, "space.min_width": 4096, "objectives.latency_batch": 4096,
             "data.image_size": 4096, "ray.max_failures": 100}  # fmt: skip
MAX_BATCH = 65_536
MAX_EXPERIMENT = 200  # characters of mlflow.experiment


class ConfigError(UserError):
    """A config file or override that cannot be used."""


@dataclass(frozen=True)
class ModelConfig:
    """The dense architecture whose widths are searched."""

    arch: str = "cifar_resnet20"
    keep: tuple[str, ...] = ()  # layer names or glob patterns whose channel groups stay at base width
    init: str = "scratch"  # or pretrained: start each trial from the source's trained weights (trainers/start.py)


@dataclass(frozen=True)
class DataConfig:
    """The data set every trial trains on (see `precrop train --help` for the names)."""

    name: str = "digits"
    data_dir: str | None = None
    download: bool = False  # fetch a missing CIFAR copy into data_dir (needs internet; every node does it once)
    val_fraction: float = 0.1
    image_size: int | None = None
    resident: str = "auto"
    train_subset: int | None = None  # train on this many images only (stratified): quick, reduced runs


@dataclass(frozen=True)
class SpaceConfig:
    """What each trial samples: the allocator and its budget, and the training hyperparameters.

    `budget` is a fraction of the dense model's `budget_metric` (PreCrop, in (0, 1]); with `expand` > 1
    it is PreConfig's scale and may exceed 1 (groups may grow up to `expand` x their base width).
    """

    allocators: tuple[str, ...] = ("synexp", "uniform")
    budget_metric: str = "macs"
    budget: tuple[float, float] = (0.2, 1.0)
    expand: float = 1.0
    variant: str = "gp"
    objective: str = "layer"  # what synexp maximizes: layer (the paper's) or path (precrop/width/objective.py)
    divisor: int = 8
    min_width: int = 8
    lr: tuple[float, float] = (0.02, 0.2)
    weight_decay: tuple[float, float] = (1e-4, 1e-3)
    label_smoothing: tuple[float, float] = (0.0, 0.1)
    batch_size: tuple[int, ...] = (128,)
    epochs: int = 10
    schedule: str = "cosine"
    warmup_epochs: float = 1.0


LATENCY_RUNTIMES = ("eager", "compiled", "onnxruntime")
LATENCY_DEVICES = ("cpu", "trial")


@dataclass(frozen=True)
class ObjectivesConfig:
    """Maximize validation accuracy; minimize `cost` (macs, params, or measured latency_ms), latency timed at
    `latency_batch` on `latency_runtime` and `latency_device`."""

    cost: str = Metric.MACS.value
    latency_batch: int = 1
    latency_runtime: str = "eager"  # eager, compiled (torch.compile) or onnxruntime (search/run/runtimes.py)
    latency_device: str = "cpu"  # cpu, or trial: the trial's own training device (CUDA events on a GPU)


@dataclass(frozen=True)
class ConstraintsConfig:
    """Hard limits on a trial's cost (null: none): a trial over any is infeasible, never on the front.

    Passed to Optuna as constraints (each `value / limit - 1`, feasible when <= 0), so its samplers learn to
    stay within them; `latency_ms` is checked against the quiet end-of-search value (search/run/latency.py).
    """

    latency_ms: float | None = None
    params: float | None = None
    macs: float | None = None

    def limits(self) -> dict[str, float]:
        """The limits set, by metric name."""
        return {name: float(v) for name, v in (("latency_ms", self.latency_ms), ("params", self.params),
                                                ("macs", self.macs)) if v is not None}  # fmt: skip


def limit_excess(metrics: Mapping[str, Any], limits: Mapping[str, float]) -> dict[str, float]:
    """Per limit, `value / limit - 1`: above 0 is over the limit (Optuna's sign for infeasible); a value not
    reported counts as over. The one rule the searcher, the end of a search and the live board apply."""
    return {name: (float(metrics[name]) / limit - 1) if metrics.get(name) is not None else 1.0
            for name, limit in limits.items()}  # fmt: skip


@dataclass(frozen=True)
class SearchSettings:
    """How many trials, how many at once, which Optuna sampler proposes them, and where its study is stored.

    `optuna_storage`: `auto` ($PRECROP_OPTUNA_STORAGE when set, else sqlite `optuna.db` beside a local
    MLflow store, else memory), `none` (memory), or a database URL such as sqlite:///optuna.db; never
    MLflow's own database (search/run/searcher.py says why).
    """

    trials: int = 8
    concurrency: int = 2
    sampler: str = "tpe"
    seed: int = 0
    optuna_storage: str = "auto"
    progress_every_s: float = 30.0  # off a terminal, a progress line at most this often (0: at every epoch)


@dataclass(frozen=True)
class ResourcesConfig:
    """Per trial: CPUs, and a GPU fraction used only when the cluster has GPUs."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class AshaConfig:
    """Asynchronous successive halving (epochs are its time unit); `enabled: false` trains every trial to the end.

    `mode: pareto` ranks each rung by dominance on (val_acc, the cost objective), so cheap trials are
    compared only with trials at least as cheap; `mode: accuracy` is Ray's ASHA on val_acc alone.
    """

    enabled: bool = True
    mode: str = "pareto"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class MlflowConfig:
    """Where runs go. A relative sqlite path is relative to the directory the search starts in.

    `tracking_uri: null` means $MLFLOW_TRACKING_URI when set (the cluster heads export it), else
    sqlite:///mlflow.db, so one config file runs both on a laptop and on a cluster.
    """

    tracking_uri: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class RayConfig:
    """Ray: `address` null joins the cluster `ray start` began on this machine, else starts an embedded one.

    `storage_path: null` means $PRECROP_STORAGE_PATH when set (shared storage such as s3://..., which
    the cluster heads export), else ./ray_results.
    """

    address: str | None = None
    storage_path: str | None = None
    max_failures: int = 2
    checkpoint_every_s: float = 10.0
    # a joined cluster with no GPU yet (resources.gpu > 0): how long to wait for the autoscaler to add one
    gpu_wait_s: float = 900.0


@dataclass(frozen=True)
class ExperimentConfig:
    """One search: the whole YAML file."""

    name: str = "search"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    asha: AshaConfig = field(default_factory=AshaConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment: `mlflow.experiment`, or the config's name."""
        return self.mlflow.experiment or self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-ready dictionary (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


# ----- loading ------------------------------------------------------------------------------------


# ----- validation ---------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
