"""Multi-objective Optuna searcher for Ray Tune, with a completion hook that tells Optuna the truth.

Ray's `OptunaSearch.on_trial_complete` marks an ASHA-stopped trial COMPLETE with its early accuracy
(so it can join Optuna's Pareto front) and marks an errored trial COMPLETE when it had reported once.
Here an errored or diverged trial is FAIL, and every other trial is told COMPLETE with its last
(accuracy, cost) and the constraint `untrained_fraction` (the share of the epochs it did not train):
0 for a trial that trained to the end, > 0 for one the scheduler stopped, which makes it infeasible.

Why a stopped trial is not PRUNED: Optuna's samplers would then learn little or nothing from it.
NSGA-II builds its generations from COMPLETE trials only (optuna/samplers/_ga/_base.py), so with
half the trials stopped it keeps sampling its random first generation about twice as long. Told
COMPLETE but infeasible, a stopped trial counts toward its generation and ranks below every
fully trained trial (constrained domination); TPE puts infeasible trials in its "bad" group, ordered
by how early they were stopped, as it does with PRUNED ones. Infeasible trials never enter
`study.best_trials`, so Optuna's front still holds only fully trained trials.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search import ray_compat
from search.config import ExperimentConfig
from search.schema import UNTRAINED_CONSTRAINT, ResultKey

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


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch whose completions are COMPLETE (feasible or not) or FAIL, as described above."""

    def __init__(self, *args: Any, epochs: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epochs = epochs  # a trial's full schedule: how far a stopped trial got is measured against it

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended; feasible only if it trained to the last epoch."""
        ot_trial = ray_compat.untold_optuna_trial(self, trial_id)
        if ot_trial is None:
            return
        state, values, untrained = completion_state(self.metric, result, error, self.epochs)
        study = ray_compat.optuna_study(self)
        try:
            if state == TrialState.COMPLETE:
                ot_trial.set_constraint(UNTRAINED_CONSTRAINT, untrained)
            study.tell(ot_trial, values, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. a NaN objective
            logger.warning("optuna rejected the result of trial %s: %s", trial_id, exc)
            study.tell(ot_trial, None, state=TrialState.FAIL)
        ray_compat.mark_told(self, trial_id)


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
