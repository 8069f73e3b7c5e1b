"""Paired comparisons of a study's arms with its reference arm: per-seed differences and a 95% CI.

Every arm of a study is trained with the same seeds, so arm and reference of one seed share their data
split and (for the same architecture) their initialization stream: the difference within a seed is the
quantity to average. For n seed pairs with differences d_i, the mean difference gets the Student t
interval mean +- t_{0.975, n-1} x sd(d) / sqrt(n); with one pair there is no interval ("n/a"). A cell
missing for one seed (a failed trial) drops only that seed's pair.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search.results.outputs import csv_text
from search.spec.schema import Metric

if TYPE_CHECKING:
    from search.spec.grid import Study
    from search.studies.cells import Cell

CONFIDENCE = 0.95
# the Cell fields compared (named as the metrics they hold)
METRICS = (Metric.TEST_ACC, Metric.VAL_ACC)
# the arm every other arm is compared with, per study kind (the granularity study's channel arm is `synexp`)
REFERENCES = {"baselines": "uniform", "granularity": "synexp", "mapping": "gp"}


@dataclass(frozen=True)
class PairedDifference:
    """Mean of n paired differences and its 95% Student t interval (None bounds when n < 2)."""

    n: int
    mean: float | None
    low: float | None
    high: float | None


def paired_difference(differences: Sequence[float]) -> PairedDifference:
    """The mean of `differences` with its two-sided 95% Student t confidence interval."""
    n = len(differences)
    if n == 0:
        return PairedDifference(0, None, None, None)
    mean = statistics.fmean(differences)
    if n == 1:
        return PairedDifference(1, mean, None, None)
    from scipy.stats import t

    half = float(t.ppf((1 + CONFIDENCE) / 2, n - 1)) * statistics.stdev(differences) / math.sqrt(n)
    return PairedDifference(n, mean, mean - half, mean + half)


def reference_of(study: Study) -> str | None:
    """The study's reference arm, when it is among the study's values."""
    reference = REFERENCES.get(study.kind)
    return reference if reference in study.values else None


def seed_differences(cells: Sequence[Cell], value: str, reference: str, budget: float, metric: str) -> list[float]:
    """value - reference of `metric`, one per seed both arms have (in seed order)."""
    mine, theirs = _by_seed(cells, value, budget), _by_seed(cells, reference, budget)
    pairs = [(getattr(mine[s], metric), getattr(theirs[s], metric)) for s in sorted(mine.keys() & theirs.keys())]
    return [a - b for a, b in pairs if a is not None and b is not None]


def _by_seed(cells: Sequence[Cell], value: str, budget: float) -> dict[int, Cell]:
    return {c.seed: c for c in cells if c.value == value and c.budget == budget}


@dataclass(frozen=True)
class Comparison:
    """One arm at one budget against the reference: seeds both have, and each metric's difference."""

    value: str
    budget: float
    pairs: int
    stats: dict[str, PairedDifference]


def paired_comparisons(cells: Sequence[Cell], study: Study) -> list[Comparison]:
    """The comparison of every non-reference arm that has a cell, budget by budget."""
    reference = reference_of(study)
    if reference is None:
        return []
    found = []
    for budget in study.budgets:
        for value in study.values:
            if value == reference or not _by_seed(cells, value, budget):
                continue
            pairs = len(_by_seed(cells, value, budget).keys() & _by_seed(cells, reference, budget).keys())
            stats: dict[str, PairedDifference] = {
                m: paired_difference(seed_differences(cells, value, reference, budget, m)) for m in METRICS
            }
            found.append(Comparison(value, budget, pairs, stats))
    return found


def paired_rows(cells: Sequence[Cell], study: Study, label: Callable[[str], str]) -> tuple[list[str], list[list[Any]]]:
    """The paired table: arm, budget, seed pairs, then mean difference and 95% CI of test and val accuracy."""
    reference = reference_of(study)
    shown = label(reference) if reference else "-"
    header = [study_label(study), "budget", "n pairs", f"test acc - {shown}", "95% CI", f"val acc - {shown}", "95% CI"]
    rows = []
    for c in paired_comparisons(cells, study):
        row: list[Any] = [label(c.value), f"{c.budget:g}", c.pairs]
        for metric in METRICS:
            row += _formatted(c.stats[metric], c.pairs)
        rows.append(row)
    return header, rows


def study_label(study: Study) -> str:
    """The first column's name: granularity, variant or allocator."""
    return {"granularity": "granularity", "mapping": "variant"}.get(study.kind, "allocator")


def _formatted(stat: PairedDifference, pairs: int) -> list[str]:
    """[mean difference, CI] as shown; a metric present in fewer pairs than the cells names its n."""
    if stat.mean is None:
        return ["-", "-"]
    mean = f"{stat.mean:+.4f}" + (f" (n={stat.n})" if stat.n != pairs else "")
    if stat.low is None or stat.high is None:
        return [mean, "n/a"]
    return [mean, f"[{stat.low:+.4f}, {stat.high:+.4f}]"]


def paired_csv(cells: Sequence[Cell], study: Study) -> str:
    """The paired comparisons as numbers (empty CI fields where there is no interval)."""
    header = ["value", "reference", "budget", "pairs"]
    for metric in METRICS:
        header += [f"{metric}_n", f"{metric}_mean_diff", f"{metric}_ci_low", f"{metric}_ci_high"]
    reference = reference_of(study)
    rows = []
    for c in paired_comparisons(cells, study):
        row: list[Any] = [c.value, reference, c.budget, c.pairs]
        for metric in METRICS:
            stat = c.stats[metric]
            row += [stat.n, _blank(stat.mean), _blank(stat.low), _blank(stat.high)]
        rows.append(row)
    return csv_text(header, rows)


def _blank(value: float | None) -> float | str:
    return "" if value is None else value
