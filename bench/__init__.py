"""Benchmarks: `python -m bench NAME` (run from the repo root, in .venv)."""
