"""One trained cell of a study, the row every study table and paired comparison is made of."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    """One trained cell of a study, as read back from its MLflow run."""

    value: str
    budget: float
    seed: int
    val_acc: float | None
    test_acc: float | None
    macs_fraction: float
    params_fraction: float
    latency_ms: float
    objective: float | None = None  # SynExp's sum_l log d_l of the realized plan
