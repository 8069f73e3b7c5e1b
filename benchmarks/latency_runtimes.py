"""Latency of cropped models on each runtime a search can time with (search/run/runtimes.py), eager PyTorch
the reference: does the runtime change which plan is faster?

    python benchmarks/latency_runtimes.py [--arch cifar_resnet20] [--budgets 0.3 0.5 1.0] [--batch 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from precrop.methods.registry import realize
from precrop.nn.build import build_from_plan, layer_table
from precrop.textui import format_table
from precrop.width.allocate import AllocationRequest
from search.run.latency import time_models
from search.spec.config import LATENCY_RUNTIMES


def main() -> None:
    """Print one row per plan: each runtime's latency and its ratio to eager."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument("--allocators", nargs="+", default=["synexp", "uniform"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 1.0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = layer_table(args.arch)
    plans = [(a, b, realize(a, table, AllocationRequest(macs=b), None).plan)
             for a in args.allocators for b in args.budgets]  # fmt: skip
    models = [build_from_plan(plan, seed=0) for _, _, plan in plans]
    shapes = [plan.input_shape for _, _, plan in plans]
    values, seconds = {}, {}
    for runtime in LATENCY_RUNTIMES:
        started = time.perf_counter()
        values[runtime] = time_models(models, shapes, args.batch, runtime=runtime)
        seconds[runtime] = time.perf_counter() - started
    rows = []
    for i, (allocator, budget, plan) in enumerate(plans):
        eager = values["eager"][i]
        cells = [f"{values[r][i]:.3f} ({values[r][i] / eager:.2f}x)" for r in LATENCY_RUNTIMES]
        rows.append([allocator, budget, f"{plan.counted.macs:,}", *cells])
    print(f"{args.arch}, batch {args.batch}, {args.threads} thread(s); ms (ratio to eager), fastest of 5 rounds")
    print(format_table(["allocator", "MACs budget", "MACs", *LATENCY_RUNTIMES], rows))
    print("setup and timing of all plans: " + ", ".join(f"{r} {seconds[r]:.0f} s" for r in LATENCY_RUNTIMES))
    for runtime in LATENCY_RUNTIMES[1:]:
        order = sorted(range(len(plans)), key=lambda i: values[runtime][i])
        same = order == sorted(range(len(plans)), key=lambda i: values["eager"][i])
        print(f"{runtime}: plans ranked {'as eager ranks them' if same else 'differently from eager'}")


if __name__ == "__main__":
    main()
