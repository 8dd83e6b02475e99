"""Pareto fronts, MLflow queries, exports and reports over finished searches."""
