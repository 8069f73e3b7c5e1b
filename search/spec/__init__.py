"""What a search is: the config (YAML -> frozen dataclasses), its limits, the search space and study grids,
and the names (schema) that everything below and above writes to MLflow and hands to Tune."""
