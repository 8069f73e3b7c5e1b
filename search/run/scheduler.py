"""Early stopping that serves a multi-objective search: asynchronous successive halving whose rungs
rank trials by Pareto dominance on (validation accuracy, cost) instead of accuracy alone.

Why not Ray's ASHA: `AsyncHyperBandScheduler` ranks each rung by one metric. On an accuracy-cost
search that stops cheap models (they learn more slowly in early epochs) in favour of expensive ones
and deletes the cheap end of the front the search exists to find. Optuna's pruners do not apply to
multi-objective studies at all. A trial's cost is fixed by its allocation before it trains, so at a
rung a trial can only be beaten by a trial that is at least as cheap *and* at least as accurate.

The rule (a reconstruction in the spirit of MO-ASHA, Schmucker et al. 2021, not their code): rungs
sit at `grace_period * reduction_factor**k` epochs, below the last epoch. When a trial reaches a
rung, the rung's recorded points plus its own are sorted into non-dominated layers (layer 0 is the
rung's current front). The trial continues when fewer than ceil(n / reduction_factor) points lie in
layers strictly better than its own, so about 1/reduction_factor of the trials go on, as in ASHA,
and a trial on the rung's current front is never stopped. MO-ASHA instead fills the last admitted
layer by an epsilon-net and may stop part of it; promoting the whole boundary layer is slightly less
aggressive and keeps the rule free of tie-breaks. As in ASHA, the first trial at a rung goes on.

Ray does not checkpoint scheduler state (its controller saves only the searcher and callbacks), so
`SchedulerStateKeeper` is a Tune callback that carries the rungs through Tune's callback state: the
Tuner pickles its config once, keeper and scheduler together, so after `Tuner.restore` the keeper
still holds the very scheduler Tune uses and refills its rungs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from search.infra import ray_private
from search.spec.schema import ResultKey

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

Point = tuple[float, float]  # (accuracy, cost): accuracy is maximized, cost minimized


def dominates(a: Point, b: Point) -> bool:
    """Whether `a` is at least as accurate and as cheap as `b`, and strictly better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def nondominated_layers(points: Sequence[Point]) -> list[int]:
    """The non-dominated layer of every point (0 = not dominated by any point; a point's layer is one past the
    deepest layer of the points dominating it), by the two-objective sweep in O(n log n).

    Why not peel fronts one at a time: that is quadratic per layer and cubic in the worst case, and a rung of a
    1,000-trial search holds 1,000 points. The sweep visits the points by accuracy (best first; equal
    accuracy, cheaper first), so every point that can dominate the current one was visited before it. Each
    layer keeps its cheapest cost and the accuracy of the first point it saw at that cost; a layer dominates
    the point when that cost is lower, or equal at a higher accuracy (equal points never dominate each
    other). If layer k dominates the point, so does every layer before it (a point of layer k is dominated
    by one of layer k-1), so the point's layer is found by bisection.
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
    cheapest: list[float] = []  # per layer, its lowest cost ...
    accuracy_there: list[float] = []  # ... and the accuracy of the first point seen at that cost
    layer = [0] * len(points)
    for i in order:
        accuracy, cost = points[i]
        low, high = 0, len(cheapest)
        while low < high:  # the first layer that does not dominate the point
            mid = (low + high) // 2
            if cheapest[mid] < cost or (cheapest[mid] == cost and accuracy_there[mid] > accuracy):
                low = mid + 1
            else:
                high = mid
        layer[i] = low
        if low == len(cheapest):
            cheapest.append(cost)
            accuracy_there.append(accuracy)
        elif cost < cheapest[low]:
            cheapest[low], accuracy_there[low] = cost, accuracy
    return layer


def promoted(candidate: Point, recorded: Sequence[Point], reduction_factor: float) -> bool:
    """Whether a trial reaching a rung with `candidate` goes on, given the points recorded there before it."""
    points = [*recorded, candidate]
    layers = nondominated_layers(points)
    mine = layers[-1]
    better = sum(1 for layer in layers if layer < mine)
    return better < math.ceil(len(points) / reduction_factor)


def milestones(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """Rung epochs below the last one: grace, grace*rf, grace*rf^2, ... (ascending, distinct)."""
    rungs: list[int] = []
    k = 0
    while True:
        epoch = round(grace_period * reduction_factor**k)
        if epoch >= max_t:
            return rungs
        if not rungs or epoch > rungs[-1]:
            rungs.append(epoch)
        k += 1


class PeriodicSnapshots:
    """Mixed into every scheduler a search uses: on the first trial added, Tune stops forcing an experiment
    snapshot after each trial checkpoint (search/infra/ray_private.stop_forced_experiment_snapshots says why);
    a scheduler is the one object of the search Tune hands its controller to."""

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        """Tune adds a trial: turn the forcing off (once is enough; doing it again costs nothing)."""
        ray_private.stop_forced_experiment_snapshots(tune_controller)
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]


class FifoScheduler(PeriodicSnapshots, FIFOScheduler):
    """No early stopping (`asha.enabled: false`)."""


class AccuracyASHA(PeriodicSnapshots, AsyncHyperBandScheduler):
    """Ray's ASHA on validation accuracy alone (`asha.mode: accuracy`)."""


class ParetoASHA(PeriodicSnapshots, FIFOScheduler):
    """Asynchronous successive halving with Pareto-ranked rungs on (val_acc, `cost`); see the module doc."""

    def __init__(self, cost: str, max_t: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__()
        self.cost = cost
        self.max_t = max_t
        self.reduction_factor = reduction_factor
        self.set_search_properties(ResultKey.ACCURACY.value, "max")  # the metric Tune checks every result for
        # milestone epoch -> trial id -> (accuracy, cost) recorded when the trial reached it
        self.rungs: dict[int, dict[str, Point]] = {m: {} for m in milestones(max_t, grace_period, reduction_factor)}
        self.stopped: set[str] = set()

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict[str, Any]) -> str:
        """STOP a trial dominated by too many others at the rung it just reached, else CONTINUE."""
        epoch, accuracy, cost = result.get(ResultKey.EPOCH), result.get(ResultKey.ACCURACY), result.get(self.cost)
        if epoch is None or accuracy is None or cost is None:
            return TrialScheduler.CONTINUE
        go_on = self.decide(trial.trial_id, int(epoch), float(accuracy), float(cost))
        return TrialScheduler.CONTINUE if go_on else TrialScheduler.STOP

    def decide(self, trial_id: str, epoch: int, accuracy: float, cost: float) -> bool:
        """Record the trial at the highest rung it reached for the first time; whether it goes on."""
        if trial_id in self.stopped:
            return False
        for milestone in sorted(self.rungs, reverse=True):
            recorded = self.rungs[milestone]
            if epoch < milestone or trial_id in recorded:
                continue
            others = list(recorded.values())
            recorded[trial_id] = (accuracy, cost)
            if not promoted((accuracy, cost), others, self.reduction_factor):
                self.stopped.add(trial_id)
                return False
            return True
        return True

    def state_dict(self) -> dict[str, Any]:
        """The rungs and stopped trials, as plain data."""
        rungs = {str(m): {t: list(p) for t, p in recorded.items()} for m, recorded in self.rungs.items()}
        return {"rungs": rungs, "stopped": sorted(self.stopped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refill the rungs from `state_dict()` output (rungs of another schedule are ignored)."""
        for milestone, recorded in state.get("rungs", {}).items():
            if int(milestone) in self.rungs:
                self.rungs[int(milestone)] = {t: (float(p[0]), float(p[1])) for t, p in recorded.items()}
        self.stopped = set(state.get("stopped", ()))

    def debug_string(self) -> str:
        """One line for Tune's status output."""
        sizes = ", ".join(f"{m}: {len(r)}" for m, r in sorted(self.rungs.items()))
        rule = f"ParetoASHA on ({ResultKey.ACCURACY}, {self.cost})"
        return f"{rule}; trials per rung {{{sizes}}}; {len(self.stopped)} stopped"


class SchedulerStateKeeper(Callback):
    """Saves and restores a `ParetoASHA`'s rungs with Tune's experiment state (Ray saves no scheduler)."""

    def __init__(self, scheduler: ParetoASHA) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        """The scheduler's state; Tune writes it beside the searcher's at every experiment checkpoint."""
        return {"pareto_asha": self.scheduler.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Refill the scheduler on `Tuner.restore`."""
        self.scheduler.load_state_dict(state.get("pareto_asha", {}))
