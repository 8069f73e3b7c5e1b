"""The Pareto-ranked successive-halving scheduler on synthetic learning curves, against Ray's ASHA."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import ray.cloudpickle as pickle
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.callback import CallbackList
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from search.run.scheduler import (
    ParetoASHA,
    PeriodicSnapshots,
    SchedulerStateKeeper,
    dominates,
    milestones,
    nondominated_layers,
    promoted,
)

EPOCHS = 8


def _accuracy(final: float, tau: float, epoch: int) -> float:
    """A saturating learning curve: `final` accuracy, reached more slowly for a larger `tau`."""
    return final * (1 - math.exp(-epoch / tau))


# (final accuracy, epochs-constant, cost): the cheap model learns slowly but ends on the front
CHEAP_SLOW = (0.90, 4.0, 0.2)
EXPENSIVE_FAST = [(0.95, 0.7, 1.0), (0.94, 0.8, 0.9), (0.93, 0.7, 0.8)]


def _run(scheduler: Any, trials: dict[str, tuple[float, float, float]], cost_key: str = "macs") -> set[str]:
    """Feed every trial's curve epoch by epoch (trials in order, one at a time); the ids stopped."""
    stopped: set[str] = set()
    # Tune's controller, as far as a scheduler touches it on a trial's addition (search/infra/ray_private.py)
    controller = SimpleNamespace(_checkpoint_manager=SimpleNamespace(_sync_every_n_trial_checkpoints=1))
    for trial_id, (final, tau, cost) in trials.items():
        trial = SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(controller, trial)
        if isinstance(scheduler, PeriodicSnapshots):  # every scheduler of a search (not Ray's own, compared here)
            assert controller._checkpoint_manager._sync_every_n_trial_checkpoints is None  # no snapshot forced
        for epoch in range(1, EPOCHS + 1):
            result = {"epoch": epoch, "training_iteration": epoch, "val_acc": _accuracy(final, tau, epoch),
                      cost_key: cost}  # fmt: skip
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                stopped.add(trial_id)
                break
    return stopped


def _curves() -> dict[str, tuple[float, float, float]]:
    return {**{f"fast{i}": c for i, c in enumerate(EXPENSIVE_FAST)}, "cheap": CHEAP_SLOW}


def test_a_cheap_slow_learner_on_the_front_is_not_stopped() -> None:
    # at epoch 2 the cheap model has 0.35 accuracy, the expensive ones over 0.8
    assert _accuracy(*CHEAP_SLOW[:2], 2) < 0.4 < 0.8 < min(_accuracy(f, t, 2) for f, t, _ in EXPENSIVE_FAST)
    ours = _run(ParetoASHA("macs", EPOCHS, grace_period=2, reduction_factor=2), _curves())
    assert "cheap" not in ours
    # Ray's single-metric ASHA, fed the same curves, stops exactly that model: the cheap end of the front
    theirs = _run(AsyncHyperBandScheduler(time_attr="training_iteration", metric="val_acc", mode="max",
                                          max_t=EPOCHS, grace_period=2, reduction_factor=2), _curves())  # fmt: skip
    assert "cheap" in theirs


def test_a_dominated_trial_is_stopped() -> None:
    trials = {**_curves(), "dominated": (0.80, 2.0, 0.95)}  # pricier than fast1/fast2 and less accurate
    stopped = _run(ParetoASHA("macs", EPOCHS, grace_period=2, reduction_factor=2), trials)
    assert stopped == {"dominated"}


def test_rungs_and_bookkeeping() -> None:
    assert milestones(8, 2, 2) == [2, 4]
    assert milestones(160, 10, 3) == [10, 30, 90]
    assert milestones(3, 1, 2) == [1, 2]
    assert milestones(2, 2, 2) == []
    scheduler = ParetoASHA("params", 8, 1, 2)
    assert scheduler.metric == "val_acc" and sorted(scheduler.rungs) == [1, 2, 4]
    trial = SimpleNamespace(trial_id="t")
    # no cost in the result (e.g. a trial's final diverged report without it): never a decision
    assert scheduler.on_trial_result(None, trial, {"epoch": 1, "val_acc": 0.1}) == TrialScheduler.CONTINUE
    assert scheduler.rungs[1] == {}
    assert scheduler.decide("t", 1, 0.5, 3.0) is True  # the first trial at a rung goes on
    assert scheduler.decide("t", 1, 0.1, 3.0) is True  # a repeated report (a restarted trial) is not re-ranked
    assert scheduler.rungs[1] == {"t": (0.5, 3.0)}
    assert scheduler.decide("u", 1, 0.4, 3.0) is False  # dominated by t, 1 better point >= ceil(2/2)
    assert scheduler.decide("u", 2, 0.9, 3.0) is False  # once stopped, always stopped
    assert scheduler.rungs[2] == {}


def test_the_first_front_always_goes_on_and_about_half_in_all() -> None:
    rng = random.Random(0)
    recorded = [(rng.random(), rng.random()) for _ in range(40)]
    layers = nondominated_layers(recorded)
    front = [p for p, layer in zip(recorded, layers, strict=True) if layer == 0]
    # a new point just inside the front is kept; a point dominated by the whole front is stopped
    best = max(front)
    assert promoted((best[0] + 0.001, best[1]), recorded, 2)
    assert not promoted((-1.0, 2.0), recorded, 2)
    kept = sum(promoted(p, recorded[:i], 2) for i, p in enumerate(recorded))
    assert 15 <= kept <= 30, kept


points = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=25)
accuracies = st.sampled_from([0.1, 0.25, 0.5, 0.9]) | st.floats(0, 1)
real_points = st.lists(st.tuples(accuracies, st.sampled_from([1.0, 2.5, 4.0]) | st.floats(0, 5)), min_size=1,
                       max_size=60)  # fmt: skip


def _peeled_layers(pts: list[tuple[float, float]]) -> list[int]:
    """The layers by peeling one front at a time, straight from the definition (the slow, obvious way)."""
    layer, remaining, depth = [-1] * len(pts), set(range(len(pts))), 0
    while remaining:
        front = {i for i in remaining if not any(dominates(pts[j], pts[i]) for j in remaining if j != i)}
        for i in front:
            layer[i] = depth
        remaining -= front
        depth += 1
    return layer


@settings(max_examples=300, deadline=None)
@given(real_points)
def test_the_sweep_gives_the_layers_peeling_gives(pts: list[tuple[float, float]]) -> None:
    assert nondominated_layers(pts) == _peeled_layers(pts)


def test_a_rung_of_a_thousand_trials_is_ranked_like_the_definition_says() -> None:
    rng = random.Random(1)
    # accuracies and costs on coarse grids: many ties, as rounded accuracies on a small validation set give
    pts = [(round(rng.random(), 2), float(rng.randrange(40))) for _ in range(1000)]
    layers = nondominated_layers(pts)
    assert layers == _peeled_layers(pts)
    assert max(layers) >= 10


@settings(max_examples=200, deadline=None)
@given(points)
def test_layers_against_their_definition(pts: list[tuple[int, int]]) -> None:
    layers = nondominated_layers(pts)
    for i, p in enumerate(pts):
        dominators = [layers[j] for j, q in enumerate(pts) if dominates(q, p)]
        # a point's layer is one past the deepest layer among the points dominating it (0 if none)
        assert layers[i] == (max(dominators) + 1 if dominators else 0)


def test_state_survives_the_tuner_pickle_and_tunes_callback_files(tmp_path: Any) -> None:
    scheduler = ParetoASHA("macs", EPOCHS, 2, 2)
    _run(scheduler, _curves())
    keeper = SchedulerStateKeeper(scheduler)
    # Tuner.restore unpickles the saved tuner state in one piece: keeper and scheduler stay one object
    restored = pickle.loads(pickle.dumps({"scheduler": ParetoASHA("macs", EPOCHS, 2, 2), "callbacks": [None]}))
    fresh_keeper = SchedulerStateKeeper(restored["scheduler"])
    both = pickle.loads(pickle.dumps({"scheduler": scheduler, "callbacks": [keeper]}))
    assert both["callbacks"][0].scheduler is both["scheduler"]
    # Tune's own callback-state files carry the rungs across a restore
    CallbackList([keeper]).save_to_dir(str(tmp_path), session_str="s1")
    CallbackList([fresh_keeper]).restore_from_dir(str(tmp_path))
    assert restored["scheduler"].rungs == scheduler.rungs and restored["scheduler"].rungs[2]
    assert restored["scheduler"].stopped == scheduler.stopped
    # and decide exactly as the uninterrupted scheduler does
    for args in [("late", 2, 0.3, 0.95), ("late2", 2, 0.99, 0.1)]:
        assert restored["scheduler"].decide(*args) == scheduler.decide(*args)
