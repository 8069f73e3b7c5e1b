"""torch-pruning, imported without timm.

torch-pruning 1.x imports timm at its top only for its FLOP counter (`torch_pruning.utils.op_counter`, which
this project does not use: precrop/nn/counting.py counts). Importing timm imports torchvision.models and
with it torch._dynamo: about 2.5 CPU-seconds in every process that traces a model (each search driver, each
trial process, most `precrop` commands), measured with `python -X importtime`. The dependency graph this
project uses needs neither, so timm is hidden while torch-pruning imports, unless it was imported already.
Only that FLOP counter loses its timm-specific layers; timm itself imports normally afterwards.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def _import_without_timm() -> Any:
    """`import torch_pruning`, with `import timm` failing inside it when nothing imported timm before."""
    if "torch_pruning" in sys.modules or "timm" in sys.modules:
        return importlib.import_module("torch_pruning")
    sys.modules["timm"] = None  # type: ignore[assignment]  # Python's way to make `import timm` raise ImportError
    try:
        return importlib.import_module("torch_pruning")
    finally:
        if sys.modules.get("timm", ...) is None:
            del sys.modules["timm"]


tp: Any = _import_without_timm()
