"""What a search hands back: the Pareto front, its files (CSV, tables, plots) and exported models."""
