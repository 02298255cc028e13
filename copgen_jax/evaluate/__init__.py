"""Evaluating a run: metrics, benchmarks, the deterministic baseline, reports.

``python -m copgen_jax.evaluate`` is the command line (``evaluate/__main__.py``).
"""
from copgen_jax.evaluate.run import BENCHMARKS, MODELS, evaluate

__all__ = ["BENCHMARKS", "MODELS", "evaluate"]
