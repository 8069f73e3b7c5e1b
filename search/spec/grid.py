"""Study grids: which arms a study compares, at which budgets and seeds (what `precrop study KIND` runs).

Kept in the spec layer because a search's record (search/record/records.py) stores the grid it ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from precrop.fileio import check_writable_dir
from precrop.methods.registry import MASK_METHODS
from precrop.width.mapping import VARIANTS
from search.spec.config import ConfigError
from search.spec.schema import Param

# PreCrop's own method: SynExp densities realized as channel widths
SYNEXP = "synexp"
# the same densities as weight masks, filter masks, then channel widths: the mask methods named synexp_*
GRANULARITY = (*(m for m in MASK_METHODS if m.startswith(f"{SYNEXP}_")), SYNEXP)
GRANULARITY_LABELS = {m: "channel" if m == SYNEXP else m.removeprefix(f"{SYNEXP}_") for m in GRANULARITY}
MAPPING_VARIANTS = VARIANTS


@dataclass(frozen=True)
class Study:
    """A grid: `dimension` ("allocator" or "variant") over `values`, crossed with budgets and seeds."""

    kind: str
    dimension: str
    values: tuple[str, ...]
    budgets: tuple[float, ...]
    seeds: tuple[int, ...]
    out_dir: str | None = None  # where to write study.csv/md/png besides MLflow

    @property
    def trials(self) -> int:
        """Cells in the grid."""
        return len(self.values) * len(self.budgets) * len(self.seeds)

    def points(self) -> list[tuple[str, str, float]]:
        """(allocator, variant or "", budget) of every cell, seeds aside: what preflight checks."""
        allocators = self.values if self.dimension == Param.ALLOCATOR else (SYNEXP,)
        variants = self.values if self.dimension == Param.VARIANT else ("",)
        return [(a, v, b) for a in allocators for v in variants for b in self.budgets]


MAX_SEEDS = 100  # a study trains every cell once per seed: more than this is a typo, not a study


def make_study(
    kind: str, budgets: Sequence[float], seeds: int, out_dir: str | None = None, allocators: Sequence[str] = ()
) -> Study:
    """The study `kind` at these budgets, over seeds 0..seeds-1 (`allocators`: the baselines compared)."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"--seeds must be from 1 to {MAX_SEEDS}, got {seeds}")
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
    if not budgets:
        raise ConfigError("give at least one budget")
    if kind == "granularity":
        return Study(kind, Param.ALLOCATOR, GRANULARITY, tuple(budgets), tuple(range(seeds)), out_dir)
    if kind == "baselines":
        return Study(kind, Param.ALLOCATOR, tuple(allocators), tuple(budgets), tuple(range(seeds)), out_dir)
    if kind == "mapping":
        return Study(kind, Param.VARIANT, MAPPING_VARIANTS, tuple(budgets), tuple(range(seeds)), out_dir)
    raise ConfigError(f"unknown study {kind!r}; choose granularity, mapping or baselines")
