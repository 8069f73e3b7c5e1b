"""Ray Tune + Optuna + MLflow: the search driver. The only package that talks to Ray and MLflow.

`search.load("runs:/<id>")` (search/api.py) returns a trial's model and plan; it is imported on first
use, so `import search` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["load"]

if TYPE_CHECKING:
    from search.api import load


def __getattr__(name: str) -> Any:
    """Import search.api (torch, MLflow) only when `load` is first used (PEP 562)."""
    if name == "load":
        from search.api import load

        return load
    raise AttributeError(f"module 'search' has no attribute {name!r}")
