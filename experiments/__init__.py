"""Experiments: the papers' tables, simulator-vs-measurement checks and what-if studies (see runner.py)."""
