"""Optuna at the edge: search spaces, studies, budgets, storage and the AutoML pipeline."""
