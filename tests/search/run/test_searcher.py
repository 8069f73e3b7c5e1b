"""The completion hook: errors FAIL, stopped trials COMPLETE but infeasible, only full trainings feasible."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from ray import tune

from search.run.searcher import ParetoOptunaSearch, completion_state, make_sampler, objectives
from search.spec.parse import parse_config

METRICS = ["val_acc", "macs"]


def test_completion_state_rules() -> None:
    full = {"val_acc": 0.9, "macs": 1e6, "trial_complete": 1, "epoch": 8}
    assert completion_state(METRICS, full, False, 8) == (TrialState.COMPLETE, [0.9, 1e6], 0.0)
    stopped = {**full, "trial_complete": 0, "epoch": 2}
    assert completion_state(METRICS, stopped, False, 8) == (TrialState.COMPLETE, [0.9, 1e6], 0.75)
    assert completion_state(METRICS, {**stopped, "epoch": 6}, False, 8)[2] == 0.25
    assert completion_state(METRICS, full, True, 8) == (TrialState.FAIL, None, 1.0)
    assert completion_state(METRICS, {**full, "diverged": 1}, False, 8) == (TrialState.FAIL, None, 1.0)
    assert completion_state(METRICS, {"val_acc": 0.9, "trial_complete": 1}, False, 8)[0] == TrialState.FAIL
    assert completion_state(METRICS, None, False, 8) == (TrialState.FAIL, None, 1.0)


def _searcher() -> ParetoOptunaSearch:
    config = parse_config({"search": {"seed": 3}})
    metrics, modes = objectives(config)
    searcher = ParetoOptunaSearch(metric=metrics, mode=modes, sampler=make_sampler(config), epochs=8)
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    return searcher


def test_stopped_and_errored_trials_never_reach_optunas_front() -> None:
    searcher = _searcher()
    for trial_id in ("a", "b", "c", "d"):
        assert "lr" in searcher.suggest(trial_id)
    # a trial stopped at epoch 2 with the best accuracy and the lowest cost so far
    searcher.on_trial_complete("a", {"val_acc": 0.99, "macs": 1.0, "trial_complete": 0, "epoch": 2})
    searcher.on_trial_complete("b", {"val_acc": 0.80, "macs": 10.0, "trial_complete": 1})
    searcher.on_trial_complete("c", {"val_acc": 0.95, "macs": 0.5, "trial_complete": 1}, error=True)
    searcher.on_trial_complete("d", {"val_acc": 0.90, "macs": 20.0, "trial_complete": 1})
    study: optuna.Study = searcher._ot_study
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.constraints for t in study.trials] == [{"untrained_fraction": 0.75}, {"untrained_fraction": 0.0}, {},
                                                     {"untrained_fraction": 0.0}]  # fmt: skip
    assert sorted(t.values for t in study.best_trials) == [[0.8, 10.0], [0.9, 20.0]]
    # a second completion for the same trial is ignored
    searcher.on_trial_complete("a", {"val_acc": 0.5, "macs": 1.0, "trial_complete": 1})
    assert study.trials[0].constraints == {"untrained_fraction": 0.75}


def test_nsga2_is_selectable() -> None:
    config = parse_config({"search": {"sampler": "nsga2"}})
    assert isinstance(make_sampler(config), optuna.samplers.NSGAIISampler)
    assert isinstance(make_sampler(parse_config({})), optuna.samplers.TPESampler)


def _nsga2_generation_after(stopped_state: str) -> int:
    """NSGA-II (population 4): the generation of the 9th trial after 6 stopped and 2 finished trials."""
    config = parse_config({"search": {"sampler": "nsga2", "concurrency": 2, "seed": 0}})
    metrics, modes = objectives(config)
    searcher = ParetoOptunaSearch(metric=metrics, mode=modes, sampler=make_sampler(config), epochs=8)
    searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-1)})
    for i in range(8):
        searcher.suggest(str(i))
        result = {"val_acc": 0.5 + i / 100, "macs": 10.0 - i, "trial_complete": int(i % 4 == 0), "epoch": 2}
        if stopped_state == "pruned" and i % 4:
            study: optuna.Study = searcher._ot_study
            study.tell(searcher._ot_trials[str(i)], None, state=TrialState.PRUNED)
            searcher._completed_trials.add(str(i))
        else:
            searcher.on_trial_complete(str(i), result)
    searcher.suggest("next")
    study = searcher._ot_study
    key = optuna.samplers.NSGAIISampler._get_generation_key()
    return int(study.trials[-1].system_attrs[key])


def test_nsga2_learns_from_stopped_trials() -> None:
    # told PRUNED, stopped trials are invisible to NSGA-II: it is still sampling its random first generation
    assert _nsga2_generation_after("pruned") == 0
    # told COMPLETE but infeasible, they fill generations 0 and 1: the 9th trial is bred in generation 2
    assert _nsga2_generation_after("ours") == 2
