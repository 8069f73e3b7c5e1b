"""Real speedup of cropped models vs the dense model vs unstructured pruning at the same layer densities.

For each architecture: the dense model, PreCrop-cropped models at 50% and 25% of the dense MACs, and a
"masked" model: the dense model with torch.nn.utils.prune's L1 unstructured masks that keep, in every
conv and linear layer, the same fraction of weights the 50% cropped model keeps. We time inference
(batch 1 and 64) and one SGD training step, and report `speedup / MACs reduction` (1.0 means the
measured speedup matches the MACs saved). For the masked model the MACs reduction is that of the
cropped model it mirrors: it performs the same number of non-zero multiply-adds in theory.

Run: python benchmarks/speedup.py [--archs cifar_resnet56 resnet50] [--device cpu] [--max-seconds 20] [--plans-dir D]
"""

from __future__ import annotations

import argparse
import copy
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from precrop.nn.build import build_from_plan, layer_table
from precrop.nn.counting import count_cost
from precrop.nn.zoo import REGISTRY
from precrop.textui import format_table
from precrop.width.allocate import AllocationRequest, SynExpAllocator
from precrop.width.costmodel import LayerTable
from precrop.width.plan import WidthPlan, read_plan_file
from trainers.measure import measure_latency, measure_train_step

TRAIN_BATCH = {"cifar_resnet56": 64, "resnet50": 16}


@dataclass(frozen=True)
class Row:
    """Timings of one model variant."""

    arch: str
    variant: str
    macs_fraction: float
    params_fraction: float
    b1_ms: float
    b64_ms: float
    train_ms: float


def masked_like(dense: nn.Module, cropped: nn.Module) -> nn.Module:
    """A copy of `dense` whose conv/linear layers keep (by L1 magnitude) the cropped layer's weight share."""
    masked = copy.deepcopy(dense)
    cropped_modules = dict(cropped.named_modules())
    for name, module in masked.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            density = cropped_modules[name].weight.numel() / module.weight.numel()
            prune.l1_unstructured(module, "weight", amount=1.0 - min(1.0, density))
            # prune's pre-forward hook recomputes `weight` = weight_orig * weight_mask on every call; the
            # copy made now is not a graph leaf and would block deepcopy, so drop it until the first call
            delattr(module, "weight")
    return masked


def time_variant(
    arch: str, variant: str, model: nn.Module, plan: WidthPlan, fraction: float, args: argparse.Namespace
) -> Row:
    """Measure one model; `fraction` is its MACs relative to dense (for the masked model: the mirrored one)."""
    shape = plan.input_shape
    b1 = measure_latency(model, shape, 1, args.device, max_seconds=args.max_seconds).median_ms
    b64 = measure_latency(model, shape, 64, args.device, max_seconds=args.max_seconds).median_ms
    batch = TRAIN_BATCH.get(arch, 32)
    step = measure_train_step(model, shape, batch, plan.num_classes, args.device, max_seconds=args.max_seconds)
    params = sum(p.numel() for p in model.parameters())
    if variant == "masked":  # non-zero conv/linear weights, plus biases and norms (never masked)
        params = sum(int(m.weight_mask.sum()) for m in model.modules() if hasattr(m, "weight_mask"))
        params += sum(p.numel() for n, p in model.named_parameters() if not n.endswith("weight_orig"))
    return Row(arch, variant, fraction, params / plan.base.params, b1, b64, step.median_ms)


def crop_plan(table: LayerTable, macs: float, plans_dir: str | None) -> WidthPlan:
    """SynExp's plan at `macs` of the dense MACs: read from `plans_dir` when it holds it (the GPU machine has no
    solver: benchmarks/gpu_bundle.sh makes the plans beforehand), else allocated (and saved there)."""
    path = Path(plans_dir) / f"speedup_{table.arch}_{macs:g}.json" if plans_dir else None
    if path is not None and path.exists():
        return read_plan_file(path)
    plan = SynExpAllocator().allocate(table, AllocationRequest(macs=macs))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plan.to_json())
    return plan


def bench_arch(arch: str, args: argparse.Namespace) -> list[Row]:
    """Dense, 50% and 25% MACs crops, and the masked mirror of the 50% crop."""
    table = layer_table(arch)
    plans = {f"precrop {int(f * 100)}%": crop_plan(table, f, args.plans_dir) for f in (0.5, 0.25)}
    spec = REGISTRY.get(arch)
    torch.manual_seed(0)
    dense = spec.build(spec.num_classes)
    if spec.init is not None:
        spec.init(dense)  # the same init the cropped models get (weights scale activations, hence timings)
    any_plan = next(iter(plans.values()))
    rows = [time_variant(arch, "dense", dense, any_plan, 1.0, args)]
    for name, plan in plans.items():
        cropped = build_from_plan(plan, seed=0)
        fraction = count_cost(cropped, plan.input_shape).macs / plan.base.macs
        rows.append(time_variant(arch, name, cropped, plan, fraction, args))
        if name == "precrop 50%":
            rows.append(time_variant(arch, "masked", masked_like(dense, cropped), plan, fraction, args))
        print(f"  {arch}: {name} done", flush=True)
    return rows


def render(rows: list[Row]) -> str:
    """The results table with speedups and speedup / MACs reduction against each arch's dense row."""
    dense = {r.arch: r for r in rows if r.variant == "dense"}
    body = []
    for r in rows:
        d = dense[r.arch]
        reduction = 1.0 / r.macs_fraction
        speedups = [d.b1_ms / r.b1_ms, d.b64_ms / r.b64_ms, d.train_ms / r.train_ms]
        body.append(
            [r.arch, r.variant, f"{r.macs_fraction:.3f}", f"{r.params_fraction:.3f}",
             f"{r.b1_ms:.2f}", f"{r.b64_ms:.1f}", f"{r.train_ms:.1f}",
             *(f"{s:.2f}" for s in speedups), *(f"{s / reduction:.2f}" for s in speedups)]
        )  # fmt: skip
    headers = ["arch", "model", "MACs", "params", "b1 ms", "b64 ms", "train ms",
               "x b1", "x b64", "x train", "eff b1", "eff b64", "eff train"]  # fmt: skip
    return format_table(headers, body)


def main() -> None:
    """Parse flags, run every architecture, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["cifar_resnet56", "resnet50"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per measurement (min 3 repeats)")
    parser.add_argument("--plans-dir", help="read the cropped plans from here when present, else write them here")
    parser.add_argument("--plans-only", action="store_true", help="only write the plans into --plans-dir")
    args = parser.parse_args()
    if args.plans_only:
        for arch in args.archs:
            for macs in (0.5, 0.25):
                crop_plan(layer_table(arch), macs, args.plans_dir)
        return
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}")
    rows = [row for arch in args.archs for row in bench_arch(arch, args)]
    print(render(rows))
    print("x: speedup over dense; eff: speedup / MACs reduction (1.0 = the MACs saved are all realized)")


if __name__ == "__main__":
    main()
