"""What a search leaves behind and how it is repaired: MLflow runs and models, the search record, trial
checkpoints, `precrop reconcile` and `precrop doctor`."""
