"""Syne Tune's MOASHA deciding Ray Tune trials: the outside anchor of benchmarks/front_quality.py.

Syne Tune schedulers drive their own backends, not Ray actors, so this Ray `TrialScheduler` hands
each result to a `syne_tune...MOASHA` and returns its decision. Only MOASHA's stopping rule is used:
the configurations still come from the search's own Optuna searcher, so the comparison with
search/run/scheduler.py differs in the rung rule alone. MOASHA minimizes every metric, so it sees
(-val_acc, cost). Bench-only: the product does not depend on Syne Tune.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from syne_tune.backend.trial_status import Trial as SyneTrial
from syne_tune.optimizer.scheduler import SchedulerDecision
from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

NEG_ACCURACY = "neg_val_acc"


class SyneTuneMOASHA(FIFOScheduler):
    """A Ray Tune scheduler whose rung decisions are Syne Tune MOASHA's on (-val_acc, `cost`)."""

    def __init__(self, cost: str, max_t: int, grace_period: int, reduction_factor: float, seed: int) -> None:
        super().__init__()
        self.cost = cost
        self._metric = "val_acc"
        self.moasha = MOASHA(config_space={}, metrics=[NEG_ACCURACY, cost], do_minimize=True, time_attr="epoch",
                             max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor,
                             random_seed=seed)  # fmt: skip
        self.trials: dict[str, SyneTrial] = {}

    def _trial(self, trial_id: str) -> SyneTrial:
        if trial_id not in self.trials:
            self.trials[trial_id] = SyneTrial(trial_id=trial_id, config={}, creation_time=datetime.now())  # type: ignore[arg-type]
            self.moasha.on_trial_add(self.trials[trial_id])
        return self.trials[trial_id]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        """MOASHA's decision for this result (CONTINUE while a metric is missing)."""
        if any(result.get(key) is None for key in ("epoch", "val_acc", self.cost)):
            return TrialScheduler.CONTINUE
        seen = {"epoch": int(result["epoch"]), NEG_ACCURACY: -float(result["val_acc"]),
                self.cost: float(result[self.cost])}  # fmt: skip
        decision = self.moasha.on_trial_result(self._trial(trial.trial_id), seen)
        return TrialScheduler.STOP if decision == SchedulerDecision.STOP else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        """One line for Tune's status output."""
        return f"Syne Tune MOASHA on (val_acc, {self.cost}); {self.moasha.num_stopped} stopped"
