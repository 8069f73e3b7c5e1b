"""Config validation: the range checks that parsing cannot do, each error naming its key.

`validate` is called by `load_config` (search/spec/parse.py) on every config, after the YAML has been
parsed into the frozen sections of search/spec/config.py. It checks what is the config's own business
(names, bounds on counts, ranges that are ranges, choices no other class owns); a setting that the
allocation request or the training recipe owns is checked by resolving the corners of the space into
trial specs, so AllocationRequest.validate and TrainConfig.validate hold the one copy of each such rule.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from precrop.errors import UserError
from search.spec.config import (
    ASHA_MODES,
    COST_OBJECTIVES,
    LATENCY_DEVICES,
    LATENCY_RUNTIMES,
    MAX_BATCH,
    MAX_COUNT,
    MAX_CPU,
    MAX_EXPERIMENT,
    MAX_SEED,
    MIN_CPU,
    MIN_GPU,
    OPTUNA_BACKENDS,
    OPTUNA_STORAGE_WORDS,
    SAMPLERS,
    AshaConfig,
    ConfigError,
    ExperimentConfig,
    SpaceConfig,
)
from search.spec.limits import MAX_NAME, NAME_PATTERN, first_text_problem, shown


def validate(config: ExperimentConfig) -> None:
    """Range checks that parsing cannot do; ConfigError names the key."""
    from precrop.methods.registry import METHODS
    from trainers.load import dataset_names

    _validate_texts(config)
    _validate_arch(config.model.arch)
    _validate_init(config)
    _choice("data.name", config.data.name, dataset_names())
    _require(0 < config.data.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")
    _choice("data.resident", config.data.resident, ("auto", "yes", "no"))
    subset = config.data.train_subset
    _require(subset is None or subset >= 1, "data.train_subset", "must be a positive number of images")
    if config.data.image_size is not None:
        _count("data.image_size", config.data.image_size)
    _validate_space(config.space, list(METHODS))
    _validate_trial_specs(config)
    _choice("objectives.cost", config.objectives.cost, COST_OBJECTIVES)
    _count("objectives.latency_batch", config.objectives.latency_batch)
    _choice("objectives.latency_runtime", config.objectives.latency_runtime, LATENCY_RUNTIMES)
    _choice("objectives.latency_device", config.objectives.latency_device, LATENCY_DEVICES)
    onnx_on_gpu = config.objectives.latency_runtime == "onnxruntime" and config.objectives.latency_device != "cpu"
    _require(not onnx_on_gpu, "objectives.latency_device", "must be cpu with latency_runtime onnxruntime (it runs "
             "ONNX Runtime's CPU execution provider)")  # fmt: skip
    for name, limit in config.constraints.limits().items():
        _require(_finite(limit) and limit > 0, f"constraints.{name}", f"must be a positive number, got {shown(limit)}")
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
        check_tracking_uri(config.mlflow.tracking_uri, "mlflow.tracking_uri")
    _count("ray.max_failures", config.ray.max_failures, low=0)
    progress = config.search.progress_every_s
    _require(_finite(progress) and progress >= 0, "search.progress_every_s", "must be 0 (every epoch) or more seconds")
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


def check_tracking_uri(uri: str, source: str) -> None:
    """ConfigError naming `source` unless `uri` is a tracking store MLflow 3 writes to.

    MLflow 3 refuses its file store (`file:`) with an exception unless MLFLOW_ALLOW_FILE_STORE=true."""
    _require(
        uri.startswith(("sqlite:", "http://", "https://", "file:", "postgresql", "mysql")),
        source,
        "must be sqlite:///FILE, http(s)://HOST:PORT or a database URI",
    )
    file_store_allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() == "true"
    _require(
        not uri.startswith("file:") or file_store_allowed,
        source,
        f"MLflow 3 no longer writes its file store ({shown(uri)}): use sqlite:///FILE (`mlflow migrate-filestore` "
        "converts an old one) or set MLFLOW_ALLOW_FILE_STORE=true",
    )


def check_optuna_storage(value: str, source: str) -> None:
    """ConfigError naming `source` unless `value` is auto, none, or a database URL Optuna's RDBStorage
    accepts: sqlite (a file), postgresql or mysql, without a password. Reads the URL only; opens nothing.

    A password is refused because Tune saves the searcher, and with it the storage URL, in its state.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from search.spec.limits import text_problem

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


def _validate_space(space: SpaceConfig, allocators: Sequence[str]) -> None:
    """The space's own rules: known allocators and budget metric, ranges that are ranges, counts bounded."""
    for i, name in enumerate(space.allocators):
        _choice(f"space.allocators[{i}]", name, allocators)
    _choice("space.budget_metric", space.budget_metric, ("macs", "params"))
    for key in ("budget", "lr", "weight_decay", "label_smoothing"):
        low, high = bounds = getattr(space, key)
        ok = _finite(low) and _finite(high) and low <= high
        _require(ok, f"space.{key}", f"must be [low, high] of finite numbers with low <= high, got {list(bounds)}")
    for key in ("divisor", "min_width", "epochs"):
        _at_most(f"space.{key}", getattr(space, key), MAX_COUNT[f"space.{key}"])
    for i, size in enumerate(space.batch_size):
        _at_most(f"space.batch_size[{i}]", size, MAX_BATCH)


def _validate_trial_specs(config: ExperimentConfig) -> None:
    """Resolve the corners of the space (low and high ends of every range, with each batch size) into trial
    specs, so AllocationRequest and TrainConfig check every setting they own by their one rule; their error
    becomes a ConfigError naming the config key of the field at fault."""
    from precrop.width.allocate import BudgetError
    from search.spec.space import TrialSpec
    from trainers.recipe import RecipeError

    space = config.space
    for i, size in enumerate(space.batch_size):
        for end in (0, 1):
            corner = {"allocator": space.allocators[0], "budget": space.budget[end], "lr": space.lr[end],
                      "weight_decay": space.weight_decay[end], "label_smoothing": space.label_smoothing[end],
                      "batch_size": size}  # fmt: skip
            try:
                TrialSpec.resolve(config, corner)
            except (BudgetError, RecipeError) as exc:
                raise ConfigError(f"{_space_key(exc.field, i)}: {exc}") from None


def _space_key(field: str | None, batch: int) -> str:
    """The config key of an AllocationRequest or TrainConfig field the space sets (`batch`: which batch size)."""
    keys = {"params": "space.budget", "macs": "space.budget", "batch_size": f"space.batch_size[{batch}]",
            "keep": "model.keep"}  # fmt: skip
    return keys.get(field, f"space.{field}") if field else "space"


def _at_most(key: str, value: int, high: int) -> None:
    """The config's own bound on a count (the class that uses it says how low it may go)."""
    _require(value <= high, key, f"must be at most {high}, got {shown(value)}")


def _validate_init(config: ExperimentConfig) -> None:
    """model.init: scratch, or pretrained for a model source that returns trained weights and width methods."""
    from precrop.methods.registry import MASK_METHODS
    from trainers.start import check_init

    masks = any(a in MASK_METHODS for a in config.space.allocators)
    try:
        check_init(config.model.init, config.model.arch, masks)
    except UserError as exc:
        raise ConfigError(f"model.init: {exc}") from None


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
