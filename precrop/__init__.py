"""precrop: channel-width math (layer tables, width allocation) and model surgery.

The Python API is `precrop.crop`, `precrop.apply_plan`, `precrop.load` and `precrop.save` (precrop/api.py).
They are loaded on first use, so importing `precrop` or `precrop.width.costmodel` still does not import
torch; model code lives in submodules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("Cropped", "apply_plan", "crop", "load", "save")
__all__ = ["Cropped", "__version__", "apply_plan", "crop", "load", "save"]

if TYPE_CHECKING:
    from precrop.api import Cropped, apply_plan, crop, load, save


def __getattr__(name: str) -> Any:
    """Import precrop.api (and torch) only when one of its names is first used (PEP 562)."""
    if name in _API:
        from precrop import api

        return getattr(api, name)
    raise AttributeError(f"module 'precrop' has no attribute {name!r}")
