"""The completion hook: ASHA-stopped trials are PRUNED, errors FAIL, only full trainings COMPLETE."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from ray import tune

from search.config import parse_config
from search.searcher import ParetoOptunaSearch, completion_state, make_sampler, objectives

METRICS = ["val_acc", "macs"]


def test_completion_state_rules() -> None:
    full = {"val_acc": 0.9, "macs": 1e6, "trial_complete": 1}
    assert completion_state(METRICS, full, error=False) == (TrialState.COMPLETE, [0.9, 1e6])
    assert completion_state(METRICS, {**full, "trial_complete": 0}, error=False) == (TrialState.PRUNED, None)
    assert completion_state(METRICS, full, error=True) == (TrialState.FAIL, None)
    assert completion_state(METRICS, {**full, "diverged": 1}, error=False) == (TrialState.FAIL, None)
    assert completion_state(METRICS, {"val_acc": 0.9, "trial_complete": 1}, error=False)[0] == TrialState.FAIL
    assert completion_state(METRICS, None, error=False) == (TrialState.FAIL, None)


def _searcher() -> ParetoOptunaSearch:
    config = parse_config({"search": {"seed": 3}})
    metrics, modes = objectives(config)
    searcher = ParetoOptunaSearch(metric=metrics, mode=modes, sampler=make_sampler(config))
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    return searcher


def test_stopped_and_errored_trials_never_reach_optunas_front() -> None:
    searcher = _searcher()
    for trial_id in ("a", "b", "c", "d"):
        assert "lr" in searcher.suggest(trial_id)
    # an ASHA-stopped trial with the best accuracy and the lowest cost so far
    searcher.on_trial_complete("a", {"val_acc": 0.99, "macs": 1.0, "trial_complete": 0})
    searcher.on_trial_complete("b", {"val_acc": 0.80, "macs": 10.0, "trial_complete": 1})
    searcher.on_trial_complete("c", {"val_acc": 0.95, "macs": 0.5, "trial_complete": 1}, error=True)
    searcher.on_trial_complete("d", {"val_acc": 0.90, "macs": 20.0, "trial_complete": 1})
    study: optuna.Study = searcher._ot_study
    states = [t.state for t in study.trials]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert sorted(t.values for t in study.best_trials) == [[0.8, 10.0], [0.9, 20.0]]
    # a second completion for the same trial is ignored
    searcher.on_trial_complete("a", {"val_acc": 0.5, "macs": 1.0, "trial_complete": 1})
    assert study.trials[0].state == TrialState.PRUNED


def test_nsga2_is_selectable() -> None:
    config = parse_config({"search": {"sampler": "nsga2"}})
    assert isinstance(make_sampler(config), optuna.samplers.NSGAIISampler)
    assert isinstance(make_sampler(parse_config({})), optuna.samplers.TPESampler)
