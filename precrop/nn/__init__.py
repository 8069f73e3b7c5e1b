"""Torch model code: tracing a model into a layer table, resizing it, building it from a plan, counting it."""
