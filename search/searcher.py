"""Multi-objective Optuna searcher for Ray Tune, with a completion hook that tells Optuna the truth.

Ray's `OptunaSearch.on_trial_complete` marks an ASHA-stopped trial COMPLETE with its early accuracy
(so it can join Optuna's Pareto front) and marks an errored trial COMPLETE when it had reported once.
Here a trial is COMPLETE only when its last report says it trained every epoch (`trial_complete` = 1);
a trial stopped early is PRUNED; an errored or diverged trial is FAIL.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.config import ExperimentConfig

logger = logging.getLogger(__name__)

ACCURACY = "val_acc"
COMPLETE_KEY = "trial_complete"
DIVERGED_KEY = "diverged"
# a result carries this once its trial could no longer log to MLflow (see search/run_logger.py)
TRACKING_LOST_KEY = "tracking_lost"


def objectives(config: ExperimentConfig) -> tuple[list[str], list[str]]:
    """Metric names and modes of the search: maximize val accuracy, minimize the cost objective."""
    return [ACCURACY, config.objectives.cost], ["max", "min"]


def make_sampler(config: ExperimentConfig) -> optuna.samplers.BaseSampler:
    """TPE (default) or NSGA-II, seeded from the config."""
    seed = config.search.seed
    if config.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, config.search.concurrency * 2))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, config.search.trials // 2)))


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch whose completion states are COMPLETE / PRUNED / FAIL as described above."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended; never COMPLETE unless it trained to the last epoch."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state, values = completion_state(self.metric, result, error)
        study: Any = self._ot_study
        try:
            study.tell(self._ot_trials[trial_id], values, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. a NaN objective
            logger.warning("optuna rejected the result of trial %s: %s", trial_id, exc)
            study.tell(self._ot_trials[trial_id], None, state=TrialState.FAIL)
        self._completed_trials.add(trial_id)


def completion_state(
    metrics: list[str] | str, result: dict[str, Any] | None, error: bool
) -> tuple[TrialState, list[float] | None]:
    """The Optuna state (and values, for COMPLETE) for a trial that ended with `result`."""
    if error or result is None or result.get(DIVERGED_KEY):
        return TrialState.FAIL, None
    if not result.get(COMPLETE_KEY):
        return TrialState.PRUNED, None
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    missing = [m for m in names if result.get(m) is None]
    if missing:
        logger.warning("a finished trial did not report %s; marked FAIL", ", ".join(missing))
        return TrialState.FAIL, None
    return TrialState.COMPLETE, [float(result[m]) for m in names]
