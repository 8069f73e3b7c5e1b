"""Datasets, the training loop and measurement. Never imports ray or mlflow (see docs/architecture.md)."""
