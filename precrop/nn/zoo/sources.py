"""Model sources: every way to name a model besides a built-in name, resolved to an ArchSpec here only.

- `torchvision:<name>`: a torchvision classification model, built with `weights=None`.
- `timm:<name>`: a timm model (timm is the optional extra `precrop-search[timm]`, imported only here),
  built with `pretrained=False, num_classes=N`; its natural input size and normalization come from
  timm's pretrained config.
- `module.path:callable`: the user's own constructor. It is called with `num_classes=N` when its
  signature accepts a `num_classes` argument (or **kwargs), else with no argument, and then it must
  already build the number of classes asked for. The module is imported as `python -m` would find it:
  installed packages, PYTHONPATH, then the working directory.

The source string is what a WidthPlan records as `arch`, so a Ray worker rebuilds the same model.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from functools import lru_cache
from types import ModuleType
from typing import Any

from torch import nn

from precrop.errors import clip
from precrop.nn.zoo.inits import init_pytorch_default, init_timm_cnn, init_user_model
from precrop.nn.zoo.spec import ArchSpec, ModelSourceError, UnknownArchError, first_line, shown

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
DEFAULT_CLASSES = 1000  # a user constructor that requires num_classes: the ImageNet head, as torchvision
DEFAULT_INPUT_SIZE = 224  # a user constructor without an `input_size` attribute
TIMM_INSTALL = "pip install 'precrop-search[timm]'"
SOURCE_FORMS = ("torchvision:<name>", "timm:<name>", "module.path:callable")


def source_kind(name: str) -> str | None:
    """'torchvision', 'timm' or 'module' for a model source; None for a plain (built-in or unknown) name."""
    if name.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    if name.startswith(TIMM_PREFIX):
        return "timm"
    return "module" if ":" in name else None


@lru_cache(maxsize=64)
def resolve_source(name: str) -> ArchSpec:
    """The ArchSpec of a model source; UnknownArchError or ModelSourceError (one line) when it cannot be used."""
    kind = source_kind(name)
    if kind == "torchvision":
        return _torchvision_spec(name)
    if kind == "timm":
        return _timm_spec(name)
    if kind == "module":
        return _module_spec(name)
    raise UnknownArchError(f"{shown(name)} is not a model source ({', '.join(SOURCE_FORMS)})")


def user_module(name: str) -> str | None:
    """The module path of a `module.path:callable` source, else None."""
    return name.split(":", 1)[0] if source_kind(name) == "module" else None


def _close_matches(name: str, choices: list[str]) -> str:
    """' (did you mean a, b?)' for a mistyped name, or ''."""
    found = difflib.get_close_matches(name[:100], choices, n=3)
    return f" (did you mean {', '.join(found)}?)" if found else ""


# ----- torchvision --------------------------------------------------------------------------------


def torchvision_classification_models() -> list[str]:
    """Names of torchvision's classification models (no detection/segmentation/video)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_spec(name: str) -> ArchSpec:
    tv_name = name[len(TORCHVISION_PREFIX) :]
    available = torchvision_classification_models()
    if tv_name not in available:
        raise UnknownArchError(
            f"unknown torchvision classification model {shown(tv_name)}{_close_matches(tv_name, available)}; "
            "list them with `python -c 'import torchvision; print(torchvision.models.list_models())'`"
        )

    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)

    size = 299 if tv_name == "inception_v3" else 224
    return ArchSpec(name, build, 1000, size, f"torchvision.models.{tv_name}", init_pytorch_default)


# ----- timm ---------------------------------------------------------------------------------------


def _import_timm(name: str) -> ModuleType:
    try:
        import timm
    except ImportError as exc:
        raise UnknownArchError(
            f"{shown(name)} needs timm, which cannot be imported ({first_line(exc, 80)}): {TIMM_INSTALL}"
        ) from None
    return timm


def _timm_spec(name: str) -> ArchSpec:
    timm = _import_timm(name)
    model_name = name[len(TIMM_PREFIX) :]
    if not model_name or not timm.is_model(model_name):
        hint = _close_matches(model_name, timm.list_models()) if model_name else ""
        raise UnknownArchError(
            f"unknown timm model {shown(model_name)}{hint}; list them with "
            "`python -c 'import timm; print(timm.list_models())'`"
        )
    cfg = timm.get_pretrained_cfg(model_name)
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else DEFAULT_INPUT_SIZE
    classes = int(cfg.num_classes) if cfg is not None and cfg.num_classes else DEFAULT_CLASSES
    mean = tuple(float(v) for v in cfg.mean) if cfg is not None and cfg.mean else None
    std = tuple(float(v) for v in cfg.std) if cfg is not None and cfg.std else None

    def build(num_classes: int) -> nn.Module:
        model: nn.Module = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
        return model

    return ArchSpec(name, build, classes, size, f"timm {model_name}", init_timm_cnn, mean, std)


# ----- module.path:callable -----------------------------------------------------------------------


def _module_spec(name: str) -> ArchSpec:
    module_path, _, attribute = name.partition(":")
    parts = attribute.split(".")
    if not all(p.isidentifier() for p in [*module_path.split("."), *parts]):
        raise UnknownArchError(
            f"{shown(name)} is not a model source: expected module.path:callable (or {SOURCE_FORMS[0]}, "
            f"{SOURCE_FORMS[1]})"
        )
    target: Any = _import_user_module(module_path, name)
    for part in parts:
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UnknownArchError(
                f"model source {shown(name)}: {shown(module_path)} has no attribute {shown(part)}"
            ) from None
    if not callable(target):
        raise ModelSourceError(
            f"model source {shown(name)} is an object of type {type(target).__name__}, not a callable that "
            "returns an nn.Module"
        )
    takes_classes, default_classes = _num_classes_parameter(target)
    size = getattr(target, "input_size", None)
    size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else DEFAULT_INPUT_SIZE
    description = f"{module_path}.{attribute}() (your constructor)"
    if takes_classes:

        def build(num_classes: int) -> nn.Module:
            return _call(target, name, {"num_classes": num_classes})

        return ArchSpec(name, build, default_classes or DEFAULT_CLASSES, size, description, init_user_model)
    fixed = _output_classes(_call(target, name, {}), name)

    def build_fixed(num_classes: int) -> nn.Module:
        if num_classes != fixed:
            raise ModelSourceError(
                f"model source {shown(name)} takes no num_classes argument and builds {fixed} classes, but "
                f"{num_classes} were asked for: give it a num_classes parameter"
            )
        return _call(target, name, {})

    return ArchSpec(name, build_fixed, fixed, size, description, init_user_model)


def _import_user_module(module_path: str, name: str) -> ModuleType:
    """Import `module_path`, searching the working directory after everything else (as `python -m` does)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)  # appended, so a file here never shadows an installed package
    importlib.invalidate_caches()  # the module may have been written since the last import
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and (module_path == exc.name or module_path.startswith(exc.name + ".")):
            raise UnknownArchError(
                f"model source {shown(name)}: cannot import module {shown(module_path)} (no module named "
                f"{shown(exc.name)} in the working directory, on PYTHONPATH or installed)"
            ) from None
        raise ModelSourceError(
            f"model source {shown(name)}: importing {shown(module_path)} failed: {first_line(exc)}"
        ) from None
    except SystemExit as exc:
        raise ModelSourceError(f"model source {shown(name)}: importing {shown(module_path)} {_exits(exc)}") from None
    except Exception as exc:  # the user's module raised while it was imported (a SyntaxError, anything)
        raise ModelSourceError(
            f"model source {shown(name)}: importing {shown(module_path)} failed: {first_line(exc)}"
        ) from None


def _num_classes_parameter(target: Callable[..., object]) -> tuple[bool, int | None]:
    """Whether `target` accepts `num_classes=`, and that parameter's integer default if it has one."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # some builtins have no signature: call them without arguments
        return False, None
    parameter = parameters.get("num_classes")
    if parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
        default = parameter.default
        valid = isinstance(default, int) and not isinstance(default, bool) and default > 0
        return True, default if valid else None
    return any(p.kind == p.VAR_KEYWORD for p in parameters.values()), None


def _call(target: Callable[..., object], name: str, kwargs: dict[str, int]) -> nn.Module:
    """Call the user's constructor; whatever goes wrong is one line naming the source."""
    try:
        model = target(**kwargs)
    except SystemExit as exc:
        raise ModelSourceError(f"model source {shown(name)} {_exits(exc)} instead of returning a model") from None
    except Exception as exc:
        raise ModelSourceError(f"model source {shown(name)} raised {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"model source {shown(name)} returned {type(model).__name__}, not a torch nn.Module")
    return model


def _exits(exc: SystemExit) -> str:
    """What the user's code did, for an error line: it called sys.exit (or raised SystemExit)."""
    return f"called sys.exit({clip(repr(exc.code), 40)})"


def _output_classes(model: nn.Module, name: str) -> int:
    """The classes a fixed-head model predicts: its `num_classes` attribute, else its last Linear or Conv2d."""
    declared = getattr(model, "num_classes", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        return declared
    heads = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not heads:
        raise ModelSourceError(f"model source {shown(name)} built a model with no Conv2d or Linear layer")
    last = heads[-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels
