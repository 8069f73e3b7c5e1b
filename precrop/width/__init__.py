"""Width math without torch: cost model, density program, channel mapping, rounding, allocators, WidthPlan."""
