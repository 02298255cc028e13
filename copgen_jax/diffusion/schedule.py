"""The discrete noise schedule and the training objective (SPEC §5).

Timesteps are integers n in {0..N}: n = 0 is clean data (how conditions are
fed), n in {1..N} index ``alpha_bar`` of the Stable-Diffusion "scaled linear"
schedule. Every modality of every sample draws its own n during training.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


PREDICTIONS = ("eps", "v")


@dataclasses.dataclass(frozen=True)
class Schedule:
    num_steps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # What the network predicts: "eps" (the release) or "v" = sqrt(ab) eps - sqrt(1 - ab) x0.
    # v stays well scaled at every timestep: an imperfect eps at high noise becomes a
    # hugely wrong x0 (divided by sqrt(ab) ~ 0.07 at n = N), which is what short runs give.
    prediction: str = "eps"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"diffusion.prediction={self.prediction!r}: use one of {PREDICTIONS}")

    @property
    def betas(self) -> np.ndarray:
        return np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.num_steps,
                           dtype=np.float64) ** 2

    @property
    def alpha_bars(self) -> np.ndarray:
        """alpha_bar[n] for n = 0..N, with alpha_bar[0] = 1 (clean)."""
        return np.concatenate([[1.0], np.cumprod(1.0 - self.betas)])

    def coefficients(self, n):
        """(sqrt(alpha_bar_n), sqrt(1 - alpha_bar_n)) for integer timesteps n."""
        ab = jnp.asarray(self.alpha_bars, jnp.float32)[n]
        return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)

    def q_sample(self, x0, n, noise):
        """x_n = sqrt(ab_n) x0 + sqrt(1 - ab_n) eps; n broadcasts over leading axes."""
        a, s = self._broadcast(n, x0)
        return a * x0 + s * noise


    def _broadcast(self, n, x):
        a, s = self.coefficients(n)
        shape = n.shape + (1,) * (x.ndim - n.ndim)
        return a.reshape(shape), s.reshape(shape)

    def target(self, x0, n, noise):
        """What the network is trained to output for x_n made from ``x0`` and ``noise``."""
        if self.prediction == "eps":
            return noise
        a, s = self._broadcast(n, x0)
        return a * noise - s * x0

    def eps(self, output, x_n, n):
        """The network's output as ε, whatever it predicts (samplers work in ε)."""
        if self.prediction == "eps":
            return output
        a, s = self._broadcast(n, x_n)
        return s * x_n + a * output


def schedule_from_config(cfg) -> Schedule:
    d = cfg.diffusion
    return Schedule(d.num_steps, d.beta_start, d.beta_end, d.prediction)


def diffusion_loss(eps_pred: dict, eps: dict, present: dict | None = None):
    """Sum over modalities of each modality's mean squared error.

    With ``present`` (name -> (B,) bool), absent (sample, modality) pairs carry
    no loss: each modality's MSE averages over its present samples only.
    Returns (total, per-modality dict).
    """
    per_mod = {}
    for name, pred in eps_pred.items():
        err = jnp.mean(jnp.square(pred.astype(jnp.float32) - eps[name]), axis=tuple(range(1, pred.ndim)))
        if present is None:
            per_mod[name] = jnp.mean(err)
        else:
            w = present[name].astype(jnp.float32)
            per_mod[name] = jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)
    return sum(per_mod.values()), per_mod
