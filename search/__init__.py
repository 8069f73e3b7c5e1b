"""Ray Tune + Optuna + MLflow: the search driver. The only package that talks to Ray and MLflow."""
