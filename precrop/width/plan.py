"""WidthPlan: the one frozen, JSON-serializable object that crosses every boundary."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from precrop.errors import UserError
from precrop.width.costmodel import Cost

PLAN_SCHEMA_VERSION = 2
# version 1 plans (widths only) read as version 2 plans without masks
READABLE_VERSIONS = (1, 2)
GRANULARITIES = ("channel", "filter", "weight")


class PlanError(UserError):
    """A plan file that cannot be used (bad JSON, other schema version, other architecture)."""


@dataclass(frozen=True)
class WidthPlan:
    """Widths per channel group for one architecture, with the budget asked and the cost obtained.

    `budget` holds fractions of the dense model's cost ({"params": 0.5, "macs": None}); `predicted`
    is the continuous solution's cost, `counted` the exact cost of the model built at `widths`.

    Mask methods (SynFlow, SNIP, ...) keep the dense widths and zero weights instead: their plans have
    `granularity` "weight" or "filter", the kept fraction of every conv/linear layer's weights in
    `densities`, and the theoretical cost of the masked model (pruned weights cost nothing) in `sparse`.
    Channel plans (`granularity` "channel") have no densities and no sparse cost.
    """

    arch: str
    input_shape: tuple[int, int, int]
    num_classes: int
    widths: Mapping[str, int]
    budget: Mapping[str, float | None]
    base: Cost
    predicted: Cost
    counted: Cost
    allocator: str
    options: Mapping[str, Any]
    solver_status: str
    solve_ms: float
    granularity: str = "channel"
    densities: Mapping[str, float] = field(default_factory=dict)
    sparse: Cost | None = None
    schema_version: int = field(default=PLAN_SCHEMA_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", MappingProxyType(dict(self.widths)))
        object.__setattr__(self, "densities", MappingProxyType(dict(self.densities)))
        object.__setattr__(self, "budget", MappingProxyType(dict(self.budget)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def masked(self) -> bool:
        """True for weight- or filter-level mask plans (dense shapes, zeroed weights)."""
        return self.granularity != "channel"

    @property
    def effective(self) -> Cost:
        """The cost that counts for budgets and fronts: theoretical for masks, counted for widths."""
        return self.sparse if self.sparse is not None else self.counted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "schema_version": self.schema_version,
            "arch": self.arch,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "widths": dict(self.widths),
            "budget": dict(self.budget),
            "base": _cost_dict(self.base),
            "predicted": _cost_dict(self.predicted),
            "counted": _cost_dict(self.counted),
            "allocator": self.allocator,
            "options": dict(self.options),
            "solver_status": self.solver_status,
            "solve_ms": self.solve_ms,
            "granularity": self.granularity,
            "densities": dict(self.densities),
            "sparse": None if self.sparse is None else _cost_dict(self.sparse),
        }

    def to_json(self, indent: int | None = None) -> str:
        """Serialize to JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WidthPlan:
        """Inverse of `to_dict`; PlanError names what is wrong."""
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise PlanError(f"plan schema version {version!r} is not supported (expected {PLAN_SCHEMA_VERSION})")
        try:
            c, h, w = (int(v) for v in data["input_shape"])
            widths = {str(k): int(v) for k, v in data["widths"].items()}
            if any(v < 1 for v in widths.values()):
                raise PlanError("plan has a width below 1")
            return cls(
                arch=str(data["arch"]),
                input_shape=(c, h, w),
                num_classes=int(data["num_classes"]),
                widths=widths,
                budget={str(k): None if v is None else float(v) for k, v in data["budget"].items()},
                base=_cost(data["base"]),
                predicted=_cost(data["predicted"]),
                counted=_cost(data["counted"]),
                allocator=str(data["allocator"]),
                options=dict(data["options"]),
                solver_status=str(data["solver_status"]),
                solve_ms=float(data["solve_ms"]),
                granularity=_granularity(data.get("granularity", "channel")),
                densities={str(k): _density(v) for k, v in data.get("densities", {}).items()},
                sparse=None if data.get("sparse") is None else _cost(data["sparse"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> WidthPlan:
        """Parse JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc
        except RecursionError:  # json reads nested arrays and objects by recursion
            raise PlanError("plan JSON nests deeper than a plan ever does") from None
        if not isinstance(data, dict):
            raise PlanError("plan JSON must be an object")
        return cls.from_dict(data)


def _cost_dict(cost: Cost) -> dict[str, int]:
    return {"params": cost.params, "macs": cost.macs}


def _cost(data: Mapping[str, Any]) -> Cost:
    return Cost(params=int(data["params"]), macs=int(data["macs"]))


def _granularity(value: Any) -> str:
    if value not in GRANULARITIES:
        raise PlanError(f"plan granularity {value!r} is not one of {', '.join(GRANULARITIES)}")
    return str(value)


def _density(value: Any) -> float:
    density = float(value)
    if not 0 < density <= 1:
        raise PlanError(f"plan has a layer density {value!r} outside (0, 1]")
    return density


def read_plan_file(path: str | Path) -> WidthPlan:
    """Parse a plan file; a missing, unreadable, non-UTF-8 or malformed file is a PlanError naming it."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PlanError(f"plan {path} is not UTF-8 text (byte {exc.start})") from exc
    return WidthPlan.from_json(text)
