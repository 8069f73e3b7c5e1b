"""The Python API: crop a model you hold in one call, and load a cropped model back.

`crop(model, example_input, macs=0.5)` traces the model you pass (no registry name needed), solves the
width allocation, and returns a narrower dense copy, freshly initialized for training from scratch,
with its WidthPlan. `apply_plan` resizes any dense model to a plan; `load` reads a saved model
(a directory holding plan.json + model.pt, as `precrop train` and every search trial write it).
MLflow URIs (`runs:/<id>`) are read by `search.load`, since precrop itself never talks to MLflow.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn

from precrop.errors import UserError
from precrop.fileio import write_atomically
from precrop.methods.base import Probe
from precrop.nn.counting import count_cost
from precrop.nn.pretrained import crop_pretrained, recalibrate_norms
from precrop.nn.surgery import resize_to_widths
from precrop.nn.tracing import trace_layer_table
from precrop.nn.zoo.inits import init_pytorch_default
from precrop.width.allocate import AllocationRequest
from precrop.width.costmodel import LayerTable
from precrop.width.plan import PlanError, WidthPlan, read_plan_file

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.pt"
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


class Cropped(NamedTuple):
    """A cropped model and the plan it was built from; unpacks as `model, plan = crop(...)`."""

    model: nn.Module
    plan: WidthPlan


def crop(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    macs: float | None = None,
    params: float | None = None,
    scale: float | None = None,
    expand: float = 1.0,
    method: str = "synexp",
    objective: str = "layer",
    divisor: int = 8,
    min_width: int = 8,
    seed: int = 0,
    keep: Sequence[str] = (),
    batches: Batches = (),
    source: str | None = None,
    init: Callable[[nn.Module], None] | Literal["pretrained"] | None = init_pytorch_default,
) -> Cropped:
    """A narrower dense copy of `model` within the budget, and its WidthPlan; `model` is left untouched.

    Budgets are fractions of the dense model's cost: `macs=0.5` keeps half the MACs, `params=0.3` 30% of
    the parameters (both may be given). `scale=S` with `expand=U` is PreConfig: a MACs budget of S x the
    dense cost, with every channel group allowed to grow to U x its width. `method` is a width method of
    the registry (synexp, uniform; pfs and prunenet score the model on `batches`); `objective` is what
    synexp maximizes (`layer`, the paper's sum over layers, or `path`: each channel mask once per path).
    `keep` names layers (module names or glob patterns, `["conv1", "fc"]`) whose channel groups stay at base
    width; the budget still counts them. The copy is re-initialized by `init` (reset_parameters by default;
    None keeps the leading slice of the weights; "pretrained" keeps each narrowed group's channels of
    largest filter L1 norm and re-estimates BatchNorm statistics on `batches`, to fine-tune: docs/width.md).
    `source` is recorded as the plan's `arch`: give the name the model can be rebuilt from
    (`torchvision:resnet18`, `timm:...`, `my.module:make_net`) if you want `precrop.load` to rebuild it
    without the dense model at hand.
    """
    from precrop.methods.registry import method as registered_method
    from precrop.methods.registry import realize

    spec = registered_method(method)
    if spec.masks:
        raise UserError(f"{method} keeps dense shapes and masks weights; crop needs a width method (synexp, ...)")
    shape = _image_shape(example_input)
    num_classes = _num_classes(model, example_input)
    arch = source or default_source(model)
    table = trace_layer_table(copy.deepcopy(model), arch, shape[1], num_classes, verify=True)
    request = _request(macs, params, scale, expand, divisor, min_width, objective, keep)
    probe = Probe(copy.deepcopy(model), tuple(batches), seed) if spec.needs_model else None
    plan = realize(method, table, request, probe).plan
    cropped = _started_copy(model, table, plan, init, seed, batches)
    _check_counted(cropped, plan)
    return Cropped(cropped, plan)


def _started_copy(
    model: nn.Module, table: LayerTable, plan: WidthPlan, init: Callable[[nn.Module], None] | str | None, seed: int,
    batches: Batches,
) -> nn.Module:
    """The copy of `model` at the plan's widths that training starts from (see `crop`'s `init`)."""
    if init == "pretrained":
        cropped = crop_pretrained(model, table, plan.widths)
        recalibrate_norms(cropped, (images for images, _ in batches))
        return cropped
    cropped = _resized_copy(model, table, plan)
    if callable(init):
        torch.manual_seed(seed)
        init(cropped)
    return cropped


def apply_plan(model: nn.Module, plan: WidthPlan) -> nn.Module:
    """A copy of the dense `model` resized to `plan`'s widths (weights sliced; re-initialize to train)."""
    table = trace_layer_table(copy.deepcopy(model), plan.arch, plan.input_shape[1], plan.num_classes, verify=False)
    return _resized_copy(model, table, plan)


def load(directory: str | Path, model: nn.Module | None = None) -> Cropped:
    """The model saved in `directory` (plan.json + model.pt), in eval mode on the CPU.

    Without `model` the architecture is rebuilt from the plan's `arch` (a registry name or source);
    pass the dense `model` the plan was cropped from when its arch cannot be rebuilt by name.
    """
    root = Path(directory)
    plan = read_plan_file(root / PLAN_FILE)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{root} has no {WEIGHTS_FILE}")
    if model is None:
        from precrop.nn.build import build_from_plan

        built = build_from_plan(plan)
    else:
        built = apply_plan(model, plan)
    try:
        built.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except RuntimeError as exc:
        raise PlanError(f"{weights} does not fit the model of {root / PLAN_FILE}: {str(exc)[:200]}") from exc
    return Cropped(built.eval(), plan)


def save(directory: str | Path, model: nn.Module, plan: WidthPlan) -> Path:
    """Write plan.json and model.pt (the state_dict on the CPU) into `directory`; returns it."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    write_weights(root, plan, model.state_dict())
    return root


def write_weights(directory: Path, plan: WidthPlan, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write plan.json and model.pt (the state_dict, copied to the CPU) into the existing `directory`."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    write_atomically(directory / PLAN_FILE, plan.to_json(indent=2) + "\n")
    write_atomically(directory / WEIGHTS_FILE, buffer.getvalue())


def default_source(model: nn.Module) -> str:
    """`module:Class` of `model`, the source a plan records when the caller names none."""
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def _image_shape(example_input: torch.Tensor) -> tuple[int, int, int]:
    """(C, H, W) of an NCHW example batch; the tracer handles square, 3-channel images."""
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise UserError("example_input must be an image batch tensor of shape (N, C, H, W)")
    _, channels, height, width = example_input.shape
    if channels != 3 or height != width:
        raise UserError(f"crop traces square RGB inputs (N, 3, S, S); got {tuple(example_input.shape)}")
    return (3, int(height), int(width))


@torch.no_grad()
def _num_classes(model: nn.Module, example_input: torch.Tensor) -> int:
    """The number of outputs of `model` on the example (logits of shape (N, K))."""
    if not isinstance(model, nn.Module):
        raise UserError(f"crop needs a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    try:
        out = model.eval()(example_input[:1])
    except Exception as exc:
        raise UserError(f"the model fails on example_input: {type(exc).__name__}: {str(exc)[:160]}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError("crop needs a classifier: the model must return logits of shape (N, num_classes)")
    return int(out.shape[1])


def _request(
    macs: float | None, params: float | None, scale: float | None, expand: float, divisor: int, min_width: int,
    objective: str = "layer", keep: Sequence[str] = (),
) -> AllocationRequest:
    """The allocation request of crop's budget arguments (scale is PreConfig's name for a MACs budget)."""
    if scale is not None and macs is not None:
        raise UserError("give either scale or macs, not both (scale S means a MACs budget of S)")
    request = AllocationRequest(
        params=params, macs=scale if scale is not None else macs, divisor=divisor, min_width=min_width, expand=expand,
        objective=objective, keep=(keep,) if isinstance(keep, str) else tuple(keep),
    )
    request.validate()
    return request


def _resized_copy(model: nn.Module, table: LayerTable, plan: WidthPlan) -> nn.Module:
    """A deep copy of `model` resized to the plan's widths; the plan must name the traced groups."""
    if set(plan.widths) != set(table.base_widths):
        raise PlanError(f"plan does not match this model: its groups differ from the {len(table.base_widths)} traced")
    return resize_to_widths(copy.deepcopy(model), table, dict(plan.widths))


def _check_counted(model: nn.Module, plan: WidthPlan) -> None:
    """The built model's counted cost must equal the plan's (the cost model is exact by construction)."""
    counted = count_cost(model, plan.input_shape)
    if counted != plan.counted:
        raise AssertionError(f"cropped model counts {counted}, its plan says {plan.counted}")
