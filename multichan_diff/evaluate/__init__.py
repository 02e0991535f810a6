"""Evaluation: metrics (pure numpy / scipy) and the simple baselines a model must beat."""
