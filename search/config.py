"""Experiment config: YAML -> frozen dataclasses, with `--set key.path=value` overrides.

Every section is a frozen dataclass whose fields are the only keys allowed; `parse_config` walks the
YAML mapping against the field types, so an unknown key or a value of the wrong type is an error naming
its dotted path. `validate()` then checks ranges (also naming the key). Ranges are written `[low, high]`;
`[v, v]` (or a bare number) fixes a value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from precrop.errors import UserError
from search.config_limits import (
    MAX_NAME,
    NAME_PATTERN,
    ConfigLimitError,
    clip,
    first_text_problem,
    load_yaml,
    read_config_text,
    shown,
)
from search.schema import COST_METRICS, Metric

COST_OBJECTIVES = COST_METRICS
SAMPLERS = ("tpe", "nsga2")
# early-stopping rules: Pareto-ranked rungs on (val_acc, cost) (search/scheduler.py), or Ray's ASHA on val_acc
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


@dataclass(frozen=True)
class ObjectivesConfig:
    """Maximize validation accuracy; minimize `cost` (macs, params, or measured CPU latency_ms)."""

    cost: str = Metric.MACS.value
    latency_batch: int = 1


@dataclass(frozen=True)
class SearchSettings:
    """How many trials, how many at once, which Optuna sampler proposes them, and where its study is stored.

    `optuna_storage`: `auto` ($PRECROP_OPTUNA_STORAGE when set, else sqlite `optuna.db` beside a local
    MLflow store, else memory), `none` (memory), or a database URL such as sqlite:///optuna.db; never
    MLflow's own database (search/searcher.py says why).
    """

    trials: int = 8
    concurrency: int = 2
    sampler: str = "tpe"
    seed: int = 0
    optuna_storage: str = "auto"


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


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config, apply `key.path=value` overrides, and validate it (config_limits bounds the YAML)."""
    where = clip(str(path))
    try:
        text = read_config_text(path)
        raw = load_yaml(text)
    except OSError as exc:
        raise ConfigError(f"cannot read config {where}: {exc.strerror}") from exc
    except ConfigLimitError as exc:
        raise ConfigError(f"config {where} {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {clip(str(exc).splitlines()[0], 160)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    config = parse_config(raw)
    validate(config)
    return with_absolute_data_dir(config)


def with_absolute_data_dir(config: ExperimentConfig, base: Path | None = None) -> ExperimentConfig:
    """A relative `data.data_dir` made absolute against the directory the search starts in: trials run in
    their own working directories, and on a cluster the same home-relative path exists on every node."""
    folder = config.data.data_dir
    if folder is None or Path(folder).expanduser().is_absolute():
        return config
    absolute = str((base or Path.cwd()) / folder)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=absolute))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one `a.b.c=value` (value parsed as YAML) in the raw mapping, creating sections as needed."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got {shown(override)}")
    try:
        value = load_yaml(text) if text.strip() else None
    except ConfigLimitError as exc:
        raise ConfigError(f"--set {clip(key)}: the value {exc}") from None
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {clip(key)}: {clip('.'.join(parts[: i + 1]))} is not a section")
        node = child
    node[parts[-1]] = value


def parse_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Typed config from a raw mapping; ConfigError names the first unknown key or bad value."""
    return typing.cast(ExperimentConfig, _parse_dataclass(ExperimentConfig, raw, ""))


def _parse_dataclass(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key {shown(where)} (allowed here: {', '.join(names)})")
    values = {k: _parse_value(hints[k], v, f"{path}.{k}" if path else k) for k, v in raw.items()}
    return cls(**values)


def _parse_value(kind: Any, value: Any, path: str) -> Any:
    """Coerce one YAML value to the field type `kind`, or raise ConfigError naming `path`."""
    if dataclasses.is_dataclass(kind):
        return _parse_dataclass(typing.cast(type, kind), value, path)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_value(inner, value, path)
    if origin is tuple:
        items = list(value) if isinstance(value, list | tuple) else [value]
        if args[-1] is Ellipsis:
            if not items:
                raise ConfigError(f"{path} must list at least one value")
            return tuple(_parse_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(items))
        if len(items) == 1:
            items = items * len(args)
        if len(items) != len(args):
            raise ConfigError(f"{path} must be [low, high] or one number, got {shown(value)}")
        return tuple(_parse_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, items, strict=True)))
    return _parse_scalar(kind, value, path)


def _parse_scalar(kind: type, value: Any, path: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {shown(value)}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be an integer, got {shown(value)}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path} must be a number, got {shown(value)}")
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads a bare yes/no (on/off) as a boolean
            return "yes" if value else "no"
        raise ConfigError(f"{path} must be a string, got {shown(value)}")
    raise AssertionError(f"unsupported config type {kind} at {path}")


# ----- validation ---------------------------------------------------------------------------------


def validate(config: ExperimentConfig) -> None:
    """Range checks that parsing cannot do; ConfigError names the key."""
    from precrop.methods.registry import METHODS
    from precrop.width.mapping import VARIANTS
    from trainers.datasets import dataset_names
    from trainers.recipe import SCHEDULES

    _validate_texts(config)
    _validate_arch(config.model.arch)
    _choice("data.name", config.data.name, dataset_names())
    _require(0 < config.data.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")
    _choice("data.resident", config.data.resident, ("auto", "yes", "no"))
    subset = config.data.train_subset
    _require(subset is None or subset >= 1, "data.train_subset", "must be a positive number of images")
    if config.data.image_size is not None:
        _count("data.image_size", config.data.image_size)
    _validate_space(config.space, list(METHODS), VARIANTS, SCHEDULES)
    _choice("objectives.cost", config.objectives.cost, COST_OBJECTIVES)
    _count("objectives.latency_batch", config.objectives.latency_batch)
    search = config.search
    _count("search.trials", search.trials)
    _count("search.concurrency", search.concurrency)
    _choice("search.sampler", search.sampler, SAMPLERS)
    _require(0 <= search.seed <= MAX_SEED, "search.seed", f"must be in 0..{MAX_SEED}, got {shown(search.seed)}")
    check_optuna_storage(search.optuna_storage, "search.optuna_storage")
    cpu, gpu = config.resources.cpu, config.resources.gpu
    _require(MIN_CPU <= cpu <= MAX_CPU, "resources.cpu", f"must be {MIN_CPU:g} to {MAX_CPU} CPUs a trial, got {cpu:g}")
    _require(0 <= gpu <= 1, "resources.gpu", "must be a GPU fraction in [0, 1]")
    _require(gpu == 0 or gpu >= MIN_GPU, "resources.gpu", f"must be 0 or at least {MIN_GPU:g}, got {gpu:g}")
    _validate_asha(config.asha, config.space.epochs)
    if config.mlflow.tracking_uri is not None:
        _check_tracking_uri(config.mlflow.tracking_uri, "mlflow.tracking_uri")
    _count("ray.max_failures", config.ray.max_failures, low=0)
    every = config.ray.checkpoint_every_s
    _require(_finite(every) and every >= 0, "ray.checkpoint_every_s", "must be 0 (every epoch) or more seconds")
    wait = config.ray.gpu_wait_s
    _require(_finite(wait) and wait >= 0, "ray.gpu_wait_s", "must be 0 or more seconds")
    if config.ray.storage_path is not None:
        _require(bool(config.ray.storage_path.strip()), "ray.storage_path", "must not be empty")


def _validate_texts(config: ExperimentConfig) -> None:
    """Every string bounded; `name` a short plain name (an MLflow tag in search filters, a directory name)."""
    _require(
        NAME_PATTERN.fullmatch(config.name) is not None,
        "name",
        f"must be 1 to {MAX_NAME} letters, digits, '.', '_' or '-' (starting with a letter or digit), "
        f"got {shown(config.name)}",
    )
    found = first_text_problem(config.to_dict(), {"mlflow.experiment": MAX_EXPERIMENT})
    if found is not None:
        raise ConfigError(f"{found[0]}: {found[1]}")


def _count(key: str, value: int, low: int = 1) -> None:
    high = MAX_COUNT[key]
    _require(low <= value <= high, key, f"must be {low} to {high}, got {shown(value)}")


def _validate_asha(asha: AshaConfig, epochs: int) -> None:
    _choice("asha.mode", asha.mode, ASHA_MODES)
    _require(asha.grace_period >= 1, "asha.grace_period", "must be at least 1 epoch")
    if asha.enabled:
        why = f"must be below space.epochs ({epochs}): no trial could be stopped (or set asha.enabled: false)"
        _require(asha.grace_period < epochs, "asha.grace_period", why)
    factor = asha.reduction_factor
    _require(_finite(factor) and factor >= 2, "asha.reduction_factor", "must be 2 or more")


def _check_tracking_uri(uri: str, source: str) -> None:
    _require(
        uri.startswith(("sqlite:", "http://", "https://", "file:", "postgresql", "mysql")),
        source,
        "must be sqlite:///FILE, http(s)://HOST:PORT or a database URI",
    )


def check_optuna_storage(value: str, source: str) -> None:
    """ConfigError naming `source` unless `value` is auto, none, or a database URL Optuna's RDBStorage
    accepts: sqlite (a file), postgresql or mysql, without a password. Reads the URL only; opens nothing.

    A password is refused because Tune saves the searcher, and with it the storage URL, in its state.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from search.config_limits import text_problem

    if value in OPTUNA_STORAGE_WORDS:
        return
    problem = text_problem(value)
    _require(problem is None, source, problem or "")
    # RDBStorage fills {SCHEMA_VERSION} in a URL with str.format: any other brace would fail there
    _require("{" not in value and "}" not in value, source, "must not contain { or }")
    expected = "must be auto, none or a database URL (sqlite:///FILE, postgresql://..., mysql://...)"
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise ConfigError(f"{source}: {expected}; it is not a URL") from None
    backend = url.get_backend_name()
    _require(backend in OPTUNA_BACKENDS, source, f"{expected}, got a {shown(backend, 20)} URL")
    why = "must not hold a password (Tune saves the URL with its state): use ~/.pgpass or PGPASSWORD"
    _require(url.password is None, source, why)
    if backend == "sqlite":
        memory = not url.database or url.database == ":memory:"
        _require(not memory, source, "must name a file (sqlite:///optuna.db); `none` keeps the study in memory")


def tracking_uri_of(config: ExperimentConfig) -> str:
    """The tracking URI a search uses: the config's, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    if config.mlflow.tracking_uri is not None:
        return config.mlflow.tracking_uri
    return default_tracking_uri()


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set (checked), else sqlite:///mlflow.db in the working directory."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if from_env:
        _check_tracking_uri(from_env, "MLFLOW_TRACKING_URI")
        return from_env
    return DEFAULT_TRACKING_URI


def storage_path_of(config: ExperimentConfig) -> str:
    """Where Tune keeps a search: the config's storage_path, else $PRECROP_STORAGE_PATH, else ./ray_results."""
    if config.ray.storage_path is not None:
        return config.ray.storage_path
    return os.environ.get(STORAGE_ENV, "").strip() or "ray_results"


def _validate_space(
    space: SpaceConfig, allocators: Sequence[str], variants: Sequence[str], schedules: Sequence[str]
) -> None:
    for i, name in enumerate(space.allocators):
        _choice(f"space.allocators[{i}]", name, allocators)
    from precrop.width.allocate import MAX_EXPAND  # the one bound on growth, shared with the allocator

    _choice("space.budget_metric", space.budget_metric, ("macs", "params"))
    expand = space.expand
    why = f"must be in [1, {MAX_EXPAND}] (1 = PreCrop), got {expand:g}"
    _require(1 <= expand <= MAX_EXPAND, "space.expand", why)
    low, high = space.budget
    if space.expand == 1:
        ok = 0 < low <= high <= 1
        _require(
            ok, "space.budget", f"must be [low, high] with 0 < low <= high <= 1 for PreCrop, got {list(space.budget)}"
        )
    else:
        ok = 0 < low <= high <= space.expand
        _require(ok, "space.budget", f"must lie in (0, expand={space.expand}] for PreConfig, got {list(space.budget)}")
    _choice("space.variant", space.variant, variants)
    from precrop.width.objective import OBJECTIVES

    _choice("space.objective", space.objective, OBJECTIVES)
    _count("space.divisor", space.divisor)
    _count("space.min_width", space.min_width)
    _range("space.lr", space.lr, positive=True)
    _range("space.weight_decay", space.weight_decay, positive=False)
    _range("space.label_smoothing", space.label_smoothing, positive=False, upper=1.0)
    for i, size in enumerate(space.batch_size):
        _require(1 <= size <= MAX_BATCH, f"space.batch_size[{i}]", f"must be 1 to {MAX_BATCH}, got {shown(size)}")
    _count("space.epochs", space.epochs)
    _choice("space.schedule", space.schedule, schedules)
    _require(0 <= space.warmup_epochs <= space.epochs, "space.warmup_epochs", "must be in [0, epochs]")


def _range(key: str, bounds: tuple[float, float], positive: bool, upper: float = math.inf) -> None:
    low, high = bounds
    lowest_ok = low > 0 if positive else low >= 0
    what = "positive" if positive else "non-negative"
    _require(
        _finite(low) and _finite(high) and lowest_ok and low <= high <= upper,
        key,
        f"must be [low, high] of {what} numbers with low <= high{f' <= {upper:g}' if upper < math.inf else ''}, "
        f"got {list(bounds)}",
    )


def _validate_arch(arch: str) -> None:
    """model.arch: a built-in name, or a model source resolved now (imported, found), before anything runs."""
    from precrop.nn.zoo import REGISTRY
    from precrop.nn.zoo.sources import SOURCE_FORMS, source_kind

    if source_kind(arch) is None:
        known = arch in REGISTRY.names()
        _require(known, "model.arch", f"unknown value {shown(arch)}: not a built-in name (`precrop info --list` "
                 f"lists them) nor a model source ({', '.join(SOURCE_FORMS)})")  # fmt: skip
        return
    try:
        REGISTRY.get(arch)
    except UserError as exc:
        raise ConfigError(f"model.arch: {exc}") from None


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    _require(value in allowed, key, f"unknown value {shown(value)} (choose from {', '.join(allowed)})")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
