"""Held-out reconstruction quality of a tokenizer, beside a bicubic baseline.

    python -m copgen_jax.evaluate.tokenizer --tokenizer RUN/tokenizers/NAME --pixels PIXELS [--split test]

Each held-out example is encoded to its posterior mean and decoded
(categorical: argmax of the logits). Metrics are taken in physical evaluation
units — the registry's ``denormalize``, then S2 reflectance = DN / 10000 and S1
in dB clipped to [-50, 10] as the paper evaluates — per band: MAE, RMSE, PSNR and
SSIM (``copgen_jax.evaluate.metrics``; PSNR/SSIM after min-max scaling to the target's
range) and relief R² (of each image's deviations from its own mean, pooled:
what a small MAE over a wide range can hide, e.g. a DEM's hills); categorical
modalities report top-1 accuracy, mIoU mean F1 and frequency-weighted IoU.

Baselines: each image is shrunk with antialiased bicubic resampling and
enlarged back (``jax.image.resize``), at two sizes:
  * ``bicubic_same_grid``   the latent's grid (H / f): the same spatial reduction;
  * ``bicubic_same_values`` side round(H/f * sqrt(z / C)): as many stored numbers
    as the latent (z channels vs C network channels).
Categorical baselines resample the one-hot and take the argmax.
Results go to ``<run>/eval_<split>.json`` (or ``--out``).
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from copgen_jax import flagparse, storage
from copgen_jax.evaluate import metrics
from copgen_jax.codecs import LogPower, Reflectance
from copgen_jax.modalities import CATEGORICAL, Modality
from copgen_jax.models.tokenizer import outputs_to_pixels
from copgen_jax.data.pixels import pixel_batches
from copgen_jax.latents.store import Tokenizer, _bound, load_tokenizer

S1_DB_RANGE = (-50.0, 10.0)


def evaluation_units(m: Modality, y) -> np.ndarray:
    """Network range -> the units metrics are reported in (categorical: class indices)."""
    if m.kind == CATEGORICAL:
        return np.argmax(np.asarray(y), axis=-3)
    if isinstance(m.codec, LogPower):
        return np.clip(m.denormalize(y, units="db"), *S1_DB_RANGE)
    x = m.denormalize(y)
    return x / m.codec.scale if isinstance(m.codec, Reflectance) else x


def baseline_sides(tok: Tokenizer) -> dict[str, int]:
    m = tok.modality
    z, side, _ = m.latent_shape
    same_values = int(np.clip(round(side * math.sqrt(z / m.pixel_shape[0])), 1, m.size))
    return {"bicubic_same_grid": side, "bicubic_same_values": same_values}


def _predictors(tok: Tokenizer):
    """Jitted ``x -> {method: network-range prediction}`` for the tokenizer and the baselines."""
    return _bound(tok.autoencoder, functools.partial(_predict, tok.modality, tuple(baseline_sides(tok).items())))


def _predict(m: Modality, sides, ae, x):
    b, c, h, w = x.shape
    out = {"tokenizer": outputs_to_pixels(m, ae(x, sample=False)[0])}
    for name, s in sides:
        small = jax.image.resize(x, (b, c, s, s), "bicubic", antialias=True)
        out[name] = outputs_to_pixels(m, jax.image.resize(small, (b, c, h, w), "bicubic"))
    return out


class _Scores:
    """Pooled metrics over batches: sums for MAE/RMSE, per-image means for PSNR/SSIM, a confusion matrix."""

    def __init__(self, m: Modality):
        self.m, self.n, self.sums = m, 0, {}

    def _add(self, key, value, weight):
        total, w = self.sums.get(key, (0.0, 0))
        self.sums[key] = (total + np.asarray(value, np.float64) * weight, w + weight)

    def add(self, pred, target):
        b = len(target)
        self.n += b
        if self.m.kind == CATEGORICAL:
            k = self.m.num_classes
            self._add("confusion", metrics.confusion_matrix(pred, target, num_classes=k), 1)
            return
        self._add("mae", metrics.mae(pred, target), b)
        self._add("mse", np.square(metrics.rmse(pred, target)), b)
        # PSNR pools the (target-range scaled) MSE over images: pool it, convert at the end.
        self._add("scaled_mse", 10.0 ** (-metrics.psnr(pred, target) / 10.0), b)
        self._add("ssim", metrics.ssim(pred, target), b)
        # Relief: each image's deviations from its own mean, per band. A codec spanning a wide
        # range (DEM log1p over 0..8849 m) can score a small MAE while a footprint's hills are noise.
        deviation = lambda a: a - a.mean((-2, -1), keepdims=True)  # noqa: E731
        axes = (0, *range(2, target.ndim))
        self._add("relief_error", np.square(deviation(pred) - deviation(target)).sum(axes), 1)
        self._add("relief_variance", np.square(deviation(target)).sum(axes), 1)

    def result(self) -> dict:
        if self.m.kind == CATEGORICAL:
            cm = self.sums["confusion"][0]
            return {"accuracy": float(metrics.class_accuracy(cm)), "miou": float(metrics.miou(cm)),
                    "mean_f1": float(metrics.mean_f1(cm)), "fw_iou": float(metrics.fw_iou(cm)), "examples": self.n}
        mean = {k: total / w for k, (total, w) in self.sums.items()}
        with np.errstate(divide="ignore"):
            psnr = 10.0 * np.log10(1.0 / mean["scaled_mse"])
        relief_r2 = 1.0 - mean["relief_error"] / np.maximum(mean["relief_variance"], 1e-30)
        per_band = {"mae": mean["mae"], "rmse": np.sqrt(mean["mse"]), "psnr": psnr, "ssim": mean["ssim"],
                    "relief_r2": relief_r2}
        out = {k: float(np.mean(v)) for k, v in per_band.items()}
        out["per_band"] = {band: {k: float(v[i]) for k, v in per_band.items()} for i, band in enumerate(self.m.bands)}
        out["examples"] = self.n
        return out


def evaluate_tokenizer(tok: Tokenizer, pixel_dir: str, *, split: str = "test", batch_size: int = 16,
                       max_batches: int | None = None) -> dict:
    """Reconstruction metrics of ``tok`` and the baselines on ``split`` of a pixel shard set."""
    m = tok.modality
    predict = _predictors(tok)
    scores: dict[str, _Scores] = {}
    for x in pixel_batches(pixel_dir, m, batch_size, split, max_batches):
        n = len(x)
        padded = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), np.float32)]) if n < batch_size else x
        target = evaluation_units(m, x)
        for method, y in predict(jnp.asarray(padded)).items():
            scores.setdefault(method, _Scores(m)).add(evaluation_units(m, np.asarray(y)[:n]), target)
    if not scores:
        raise ValueError(f"{pixel_dir}: no {split} examples hold {m.name}; evaluate on a split that has them")
    return {"modality": m.name, "run": os.fspath(storage.absolute(tok.run_dir)), "step": tok.step, "split": split,
            "units": _units(m), "baseline_sides": baseline_sides(tok), "latent_shape": list(m.latent_shape),
            "pixel_shape": list(m.pixel_shape), "results": {k: s.result() for k, s in scores.items()}}


def _units(m: Modality) -> str:
    if m.kind == CATEGORICAL:
        return "class index"
    if isinstance(m.codec, LogPower):
        return "dB, clipped to [-50, 10]"
    return "reflectance (DN / 10000)" if isinstance(m.codec, Reflectance) else "physical (registry units)"


def _is_categorical(report) -> bool:
    """Whether a report is of a categorical modality."""
    return "accuracy" in next(iter(report["results"].values()))


FLAGS = flagparse.new()
flags.DEFINE_string("tokenizer", None, "tokenizer run directory", flag_values=FLAGS)
flags.DEFINE_string("pixels", None, "pixel shard set (directory with manifest.json)", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "split of the pixel shards", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "examples per batch", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("max_batches", None, "stop after this many batches (default: the whole split)",
                     flag_values=FLAGS)
flags.DEFINE_string("out", None, "JSON path (default <tokenizer>/eval_<split>.json)", flag_values=FLAGS)
flags.mark_flags_as_required(["tokenizer", "pixels"], flag_values=FLAGS)


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog="python -m copgen_jax.evaluate.tokenizer",
                           description=__doc__.split("\n\n")[0])
    report = evaluate_tokenizer(load_tokenizer(args.tokenizer), args.pixels, split=args.split,
                                batch_size=args.batch_size, max_batches=args.max_batches)
    out = args.out or storage.path(args.tokenizer) / f"eval_{args.split}.json"
    storage.write_text(out, json.dumps(report, indent=1))
    key = "accuracy" if _is_categorical(report) else "psnr"
    print(json.dumps({"out": out, key: {method: r[key] for method, r in report["results"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
