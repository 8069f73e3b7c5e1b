"""What every pruning method shares: the Probe it may look at, the MaskResult it returns, and its shape.

Two shapes of method, as Protocols the registry (registry.py) types its factories with:

- a WidthMethod chooses narrower channel widths: `allocate(table, request, probe=None)` returns a
  WidthPlan. Data-driven ones (pfs, prunenet) score the probe; synexp and uniform accept it and ignore it.
- a MaskMethod keeps the dense widths and zeroes weights of the probe's model:
  `prune(table, request, probe)` returns a MaskResult, the plan with its boolean masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from precrop.width.allocate import AllocationRequest
from precrop.width.costmodel import LayerTable
from precrop.width.plan import WidthPlan

if TYPE_CHECKING:  # the registry reads these types in every command's parser, which must not import torch
    import torch
    from torch import nn

Masks = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class Probe:
    """What data-driven methods may look at: the seeded dense model and a few labelled batches.

    Methods never modify `model` (they work on copies); `batches` are normalized float CPU tensors.
    """

    model: nn.Module
    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    seed: int = 0


@dataclass(frozen=True)
class MaskResult:
    """A method's output: the plan (for mask methods: dense widths, densities, sparse cost) and the boolean
    masks (empty for width methods)."""

    plan: WidthPlan
    masks: Masks


class WidthMethod(Protocol):
    """A method that chooses channel widths: the model is built at them and trained from scratch."""

    name: str

    def allocate(self, table: LayerTable, request: AllocationRequest, probe: Probe | None = None) -> WidthPlan:
        """Widths for `table` meeting `request`'s budgets on the exact cost model."""
        ...


class MaskMethod(Protocol):
    """A method that keeps the dense widths and masks weights of the probe's model (the one to train)."""

    name: str

    def prune(self, table: LayerTable, request: AllocationRequest, probe: Probe) -> MaskResult:
        """Masks on `probe.model` meeting `request`'s budgets, with their plan."""
        ...
