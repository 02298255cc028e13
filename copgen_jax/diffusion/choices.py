"""The samplers' names and per-sampler defaults, importable without JAX.

``diffusion/samplers.py`` is their home in use (it re-exports them); the command lines
build their ``--sampler`` flags from here so that ``--help`` does not import JAX.
"""
from __future__ import annotations

SAMPLERS = ("ddim", "dpm++", "dpm++sde")
ABSENT_MODES = ("drop", "noise")
SPACINGS = ("uniform", "logsnr")


def default_eta(sampler: str) -> float:
    """The noise scale a sampler gets unless told: 1 for "dpm++sde" (the SDE), else 0 (deterministic DDIM)."""
    return 1.0 if sampler == "dpm++sde" else 0.0


def default_spacing(sampler: str) -> str:
    """The timestep grid the inference API picks: "logsnr" for the DPM-Solver++ samplers, else "uniform".

    Both DPM-Solver++ samplers step in λ, and the uniform grid's one big λ step at the low-noise
    end costs them accuracy ("dpm++") or variance ("dpm++sde"; ``samplers`` module doc).
    """
    return "logsnr" if sampler in ("dpm++", "dpm++sde") else "uniform"
