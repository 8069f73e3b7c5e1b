"""Multi-objective Optuna searcher for Ray Tune, with a completion hook that tells Optuna the truth.

Ray's `OptunaSearch.on_trial_complete` marks an ASHA-stopped trial COMPLETE with its early accuracy
(so it can join Optuna's Pareto front) and marks an errored trial COMPLETE when it had reported once.
Here an errored or diverged trial is FAIL, and every other trial is told COMPLETE with its last
(accuracy, cost) and the constraint `untrained_fraction` (the share of the epochs it did not train):
0 for a trial that trained to the end, > 0 for one the scheduler stopped, which makes it infeasible.
The config's hard limits (`constraints:`) add one constraint each, `<metric>_over_limit`.

Why a stopped trial is not PRUNED: Optuna's samplers would then learn little or nothing from it.
NSGA-II builds its generations from COMPLETE trials only (optuna/samplers/_ga/_base.py), so with
half the trials stopped it keeps sampling its random first generation about twice as long. Told
COMPLETE but infeasible, a stopped trial counts toward its generation and ranks below every
fully trained trial (constrained domination); TPE puts infeasible trials in its "bad" group, ordered
by how early they were stopped, as it does with PRUNED ones. Infeasible trials never enter
`study.best_trials`, so Optuna's front still holds only fully trained trials.

Where the study lives (`search.optuna_storage`, see `storage_url`): in a database that `optuna-dashboard`
and `optuna best-trials` read, never MLflow's own: MLflow and Optuna both keep their schema revision in a
table named `alembic_version`, and Optuna refuses a database whose revision is MLflow's (a misleading
"no longer compatible with the table schema"), so the two need separate files or databases. Tune saves
this searcher (its study included) in its experiment state and restores it on `--resume`; a stored study
then already holds every trial, including those Optuna stored after Tune's last save. So the startup
points are enqueued only into a new study, a Tune trial that ends again after the resume is not told
twice, and a trial Optuna stored for a Tune trial that Tune lost is taken over by the next Tune trial
(`ParetoOptunaSearch.suggest`): the study holds exactly one trial per Tune trial.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.infra import ray_private
from search.record.tracking import first_line, local_store_path, resolve_tracking_uri
from search.spec.config import OPTUNA_STORAGE_ENV, ConfigError, ExperimentConfig, limit_excess
from search.spec.limits import clip
from search.spec.schema import OPTUNA_TRIAL_ID_ATTR, UNTRAINED_CONSTRAINT, Outcome, ResultKey, Tag
from search.spec.validate import check_optuna_storage

logger = logging.getLogger(__name__)


def objectives(config: ExperimentConfig) -> tuple[list[str], list[str]]:
    """Metric names and modes of the search: maximize val accuracy, minimize the cost objective."""
    return [ResultKey.ACCURACY.value, config.objectives.cost], ["max", "min"]


def startup_trials(config: ExperimentConfig) -> int:
    """How many first trials TPE samples without a model (and the search spreads over the budget range)."""
    return min(config.search.trials, 10, max(2, config.search.trials // 2))


def make_sampler(config: ExperimentConfig) -> optuna.samplers.BaseSampler:
    """TPE (default) or NSGA-II, seeded from the config."""
    seed = config.search.seed
    if config.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, config.search.concurrency * 2))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(config))


OPTUNA_FILE = "optuna.db"  # the study's sqlite file beside a local MLflow store


def storage_url(config: ExperimentConfig, tracking_uri: str) -> str | None:
    """The database URL the search's Optuna study is stored in, or None to keep it in memory.

    `auto`: $PRECROP_OPTUNA_STORAGE when set (a cluster head exports its database), else sqlite
    `optuna.db` beside a local MLflow store (sqlite file or folder), else memory. A relative sqlite path
    is taken from the working directory. ConfigError, before anything is opened, for MLflow's own
    database or a sqlite file in a folder that does not exist. `tracking_uri` is the resolved one.
    """
    value, source = config.search.optuna_storage, "search.optuna_storage"
    if value == "auto":
        value = os.environ.get(OPTUNA_STORAGE_ENV, "").strip()
        if not value:
            return beside_mlflow(tracking_uri)
        source = OPTUNA_STORAGE_ENV
        check_optuna_storage(value, source)
    if value == "none":
        return None
    url = resolve_tracking_uri(value)  # a relative sqlite:///FILE made absolute
    if _same_database(url, tracking_uri):
        raise ConfigError(f"{source}: is MLflow's own database; Optuna needs another one (both keep a table "
                          "named alembic_version), e.g. sqlite:///optuna.db")  # fmt: skip
    file = _sqlite_path(url)
    if file is not None and not file.parent.is_dir():
        raise ConfigError(f"{source}: the folder of the sqlite file does not exist: {clip(str(file.parent))}")
    return url


def beside_mlflow(tracking_uri: str) -> str | None:
    """sqlite `optuna.db` in the folder of a local MLflow store (sqlite:///DIR/mlflow.db, file:DIR/mlruns), or None."""
    store = local_store_path(tracking_uri)
    if store is None:
        return None
    name = OPTUNA_FILE if store.name != OPTUNA_FILE else f"optuna-{OPTUNA_FILE}"
    return f"sqlite:///{(store.parent / name).resolve()}"


def _sqlite_path(url: str) -> Path | None:
    """The file a sqlite URL names, else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def _same_database(url: str, tracking_uri: str) -> bool:
    """Whether the database URL `url` names the database of the MLflow tracking URI (same file, or same server
    and database)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        mine, mlflow = make_url(url), make_url(tracking_uri)
    except (ArgumentError, ValueError):  # http://... parses; file: and bare names do not, and are no database
        return False
    if mine.get_backend_name() != mlflow.get_backend_name():
        return False
    if mine.get_backend_name() == "sqlite":
        return bool(mine.database and mlflow.database) and (
            Path(str(mine.database)).resolve() == Path(str(mlflow.database)).resolve()
        )
    where = [(u.host, u.port, u.database, u.query.get("host")) for u in (mine, mlflow)]
    return where[0] == where[1]


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage at `url`, its tables created if missing; UserError (one line) when it cannot be opened."""
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # a missing driver, an unreachable server, a database of another schema, ...
        raise ConfigError(f"cannot open the Optuna storage {clip(url)}: {first_line(exc)} "
                          "(search.optuna_storage: none keeps the study in memory)") from exc  # fmt: skip


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch whose completions are COMPLETE (feasible or not) or FAIL, as described above, and whose
    stored study survives `--resume` with one trial per Tune trial.

    `points_to_evaluate` are enqueued into a new study only; `study_attrs` become the study's user
    attributes (the MLflow parent run and search it belongs to), and every trial carries its Tune trial id.
    """

    def __init__(
        self, *args: Any, epochs: int = 1, points_to_evaluate: list[dict[str, Any]] | None = None,
        study_attrs: Mapping[str, str] | None = None, limits: Mapping[str, float] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.epochs = epochs  # a trial's full schedule: how far a stopped trial got is measured against it
        self.limits = dict(limits or {})  # the config's hard limits (constraints:), by metric
        self.startup_points = list(points_to_evaluate or [])
        self.study_attrs = dict(study_attrs or {})
        self.trial_numbers: dict[str, int] = {}  # Tune trial id -> the number of its Optuna trial

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        """Ray's, then the study's startup points (a new study only), objective names and attributes."""
        if not super().set_search_properties(metric, mode, config, **spec):
            return False
        study = ray_private.optuna_study(self)
        if not study.get_trials(deepcopy=False):  # a resumed study holds these points already
            for point in getattr(self, "startup_points", []):
                study.enqueue_trial(point)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard labels axes with
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([self.metric] if isinstance(self.metric, str) else list(self.metric))
        for key, value in getattr(self, "study_attrs", {}).items():
            study.set_user_attr(key, value)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ray's suggestion; after a resume, stored trials no Tune trial holds are handed out first."""
        new = trial_id not in ray_private.optuna_trials(self)
        if new:
            self._requeue_unheld_trials()
        params = super().suggest(trial_id)
        if new:
            trial = ray_private.optuna_trials(self)[trial_id]
            self._numbers()[trial_id] = trial.number
            trial.set_user_attr(OPTUNA_TRIAL_ID_ATTR, trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended; feasible only if it trained to the last epoch. Once per trial:
        a trial stored as finished (told before a resume) keeps what it was told."""
        ot_trial = ray_private.untold_optuna_trial(self, trial_id)
        if ot_trial is None:
            return
        study = ray_private.optuna_study(self)
        if self._stored_trial(study, trial_id, ot_trial).state.is_finished():
            logger.info("trial %s was told before the search resumed; its stored result stands", trial_id)
            ray_private.mark_told(self, trial_id)
            return
        state, values, untrained = completion_state(self.metric, result, error, self.epochs)
        try:
            # optuna-dashboard shows user attributes, not constraints: the outcome tells stopped trials apart
            ot_trial.set_user_attr(Tag.OUTCOME.value, told_outcome(state, untrained, result).value)
            if state == TrialState.COMPLETE:
                ot_trial.set_constraint(UNTRAINED_CONSTRAINT, untrained)
                for name, excess in limit_excess(result or {}, self.__dict__.get("limits", {})).items():
                    ot_trial.set_constraint(f"{name}{OVER_LIMIT_SUFFIX}", excess)
            study.tell(ot_trial, values, state=state, skip_if_finished=True)
        except (ValueError, RuntimeError) as exc:  # e.g. a NaN objective
            logger.warning("optuna rejected the result of trial %s: %s", trial_id, exc)
            study.tell(ot_trial, None, state=TrialState.FAIL, skip_if_finished=True)
        ray_private.mark_told(self, trial_id)

    def _numbers(self) -> dict[str, int]:
        """`trial_numbers`, rebuilt once for a searcher Tune saved before that attribute existed."""
        if "trial_numbers" not in self.__dict__:
            self.trial_numbers = {tid: trial.number for tid, trial in ray_private.optuna_trials(self).items()}
        return self.trial_numbers

    def _requeue_unheld_trials(self) -> None:
        """Put every RUNNING trial of the study that no Tune trial of this searcher holds back in Optuna's queue
        (WAITING), so that the next `Study.ask` hands it out again, with the parameters it has.

        Such trials exist only after a resume: Optuna stored them (asked for Tune trials) after Tune's last
        save, and the driver was killed before the next, so Tune lost those Tune trials and suggests new ones
        in their place. `ask` completes a trial killed halfway through its parameters.
        """
        held = set(self._numbers().values())
        study = ray_private.optuna_study(self)
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in held:
                logger.info("Optuna trial %d, stored before the resume, goes to the next Tune trial", frozen.number)
                ray_private.requeue_optuna_trial(study, frozen)

    def _stored_trial(self, study: optuna.Study, trial_id: str, ot_trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        """The trial as the study's storage holds it now (the `optuna.Trial` object caches an old copy)."""
        number = self._numbers().get(trial_id, ot_trial.number)
        trials = study.get_trials(deepcopy=False)
        if number < len(trials) and trials[number].number == number:  # numbers count up from 0
            return trials[number]
        return next(t for t in trials if t.number == number)


OVER_LIMIT_SUFFIX = "_over_limit"  # the Optuna constraint of a hard limit: latency_ms_over_limit, ...


def told_outcome(state: TrialState, untrained: float, result: Mapping[str, Any] | None) -> Outcome:
    """How a trial told `state` with constraint `untrained` ended, as its MLflow run's outcome tag says it."""
    if state != TrialState.COMPLETE:
        return Outcome.DIVERGED if result and result.get(ResultKey.DIVERGED) else Outcome.FAILED
    return Outcome.COMPLETED if untrained == 0 else Outcome.STOPPED


def completion_state(
    metrics: list[str] | str, result: Mapping[str, Any] | None, error: bool, epochs: int = 1
) -> tuple[TrialState, list[float] | None, float]:
    """The Optuna state, values and untrained fraction (the constraint) of a trial that ended with `result`."""
    if error or result is None or result.get(ResultKey.DIVERGED):
        return TrialState.FAIL, None, 1.0
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    missing = [m for m in names if result.get(m) is None]
    if missing:
        logger.warning("a trial ended without reporting %s; marked FAIL", ", ".join(missing))
        return TrialState.FAIL, None, 1.0
    values = [float(result[m]) for m in names]
    if result.get(ResultKey.COMPLETE):
        return TrialState.COMPLETE, values, 0.0
    trained = min(float(result.get(ResultKey.EPOCH, 0)), epochs - 1) / max(1, epochs)
    return TrialState.COMPLETE, values, 1.0 - trained
