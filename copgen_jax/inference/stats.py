"""Per-pixel statistics over the N samples of a generation (the uncertainty maps).

Every array has the input axis first, the sample axis (1) reduced:
  images:      mean, std (per band, physical units), q<p> per quantile p (e.g. q5, q50, q95)
  class maps:  mode (the most frequent code), frequencies (K, H, W, the share of samples in
               each class) and uncertainty = 1 - share of the mode (0: all samples agree)
  lat/lon:     mean (degrees, the normalised mean of the unit vectors), std_km (RMS
               great-circle distance of the samples to that mean)
  dates:       median (datetime64), std_days
"""
from __future__ import annotations

import numpy as np

from copgen_jax.codecs import Date, LatLon
from copgen_jax.modalities import CATEGORICAL, IMAGE, Modality

EARTH_RADIUS_KM = 6371.0088


def quantile_name(q: float) -> str:
    return f"q{100 * q:g}"


def sample_stats(m: Modality, samples: np.ndarray, quantiles=(0.05, 0.5, 0.95)) -> dict[str, np.ndarray]:
    """Statistics of ``samples`` (B, N, *m.physical_shape) over the sample axis."""
    if m.kind == IMAGE:
        x = np.asarray(samples, np.float64)
        # About the first sample: the same statistics, but exact (mean = value, std = 0) where
        # every sample agrees bit for bit, as they do on known pixels (inference/known.py).
        first = x[:, :1]
        out = {"mean": first[:, 0] + (x - first).mean(1), "std": (x - first).std(1)}
        out.update({quantile_name(q): v for q, v in zip(quantiles, np.quantile(x, quantiles, axis=1))})
        return {k: v.astype(np.float32) for k, v in out.items()}
    if m.kind == CATEGORICAL:
        codes = np.asarray(m.codec.codes)
        freq = np.stack([(samples[:, :, 0] == c).mean(1) for c in codes], 1)  # (B, K, H, W)
        top = freq.argmax(1)
        return {"mode": codes[top][:, None], "frequencies": freq.astype(np.float32),
                "uncertainty": (1.0 - freq.max(1))[:, None].astype(np.float32)}
    if isinstance(m.codec, LatLon):
        vec = m.codec.encode(np.asarray(samples, np.float64))  # (B, N, 3) unit vectors
        mean = m.codec.decode(vec.mean(1))
        centre = m.codec.encode(mean)[:, None]
        angle = np.arccos(np.clip((vec * centre).sum(-1), -1.0, 1.0))
        return {"mean": mean, "std_km": np.sqrt((np.square(angle)).mean(1)) * EARTH_RADIUS_KM}
    if isinstance(m.codec, Date):
        days = np.asarray(samples, "datetime64[D]").astype(np.int64)
        return {"median": np.round(np.median(days, 1)).astype(np.int64).astype("datetime64[D]"),
                "std_days": days.std(1)}
    raise ValueError(f"{m.name}: no statistics for codec {type(m.codec).__name__}")
