"""Datasets, the training loop and measurement. Never imports ray or mlflow (see DESIGN.md section 3)."""
