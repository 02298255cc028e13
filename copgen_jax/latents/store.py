"""A trained tokenizer on disk: export, load, and its latent scale factor.

A tokenizer run directory (one per modality, conventionally
``<root>/tokenizers/<modality>/``) is an ordinary training workdir of
``copgen_jax.trainers.loop`` plus one file:

  config.json          the config it was trained with (cfg.tokenizer.modality names it)
  checkpoints/<step>/  Orbax items ``params`` and ``ema_params`` (a TokenizerWithDisc)
  scale_factor.json    {"modality", "scale_factor" = 1 / std of sampled training latents,
                        "mean", "std", "count" (latent values seen), "examples", "step",
                        and with ``tokenizer.center_latents`` "shift": per-channel means}

Loading takes the EMA weights of the newest checkpoint (what the release ships);
a scale factor recorded for another step is ignored (and so recomputed by encoding).

Centred latents: a KL autoencoder's channels keep means far from 0, while a diffusion
model's x0 guess at high noise shrinks towards 0 and every sampler step inherits that
pull, so short runs' samples drift off the data's mean (docs/experiments.md). With a
recorded ``shift`` the loaded tokenizer encodes ``z - shift`` and decodes it as it
decoded ``z``: the shift folds exactly into the biases of the two 1x1 convolutions
around the latent, so nothing downstream knows about it.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from copgen_jax import checkpoint
from copgen_jax import storage
from copgen_jax.models.tokenizer import (AutoencoderKL, TokenizerWithDisc, sample_latent, tokenizer_model_from_config,
                                         tokenizer_modality)
from copgen_jax.modalities import Modality

SCALE_FILE = "scale_factor.json"


@dataclasses.dataclass
class Tokenizer:
    """A loaded tokenizer: the autoencoder, its modality and where it came from."""

    autoencoder: AutoencoderKL
    modality: Modality
    cfg: object
    run_dir: str
    step: int
    scale_factor: float | None  # None until computed (see compute_scale_factor)

    def encode_fn(self):
        """A jitted ``pixels (B, C, H, W) -> (mean, logvar)``."""
        return _bound(self.autoencoder, _encode)

    def decode_fn(self):
        """A jitted ``latent (B, z, h, w) -> decoder output (B, C, H, W)`` (categorical: logits)."""
        return _bound(self.autoencoder, _decode)


def _encode(ae, x):
    return ae.encode(x)


def _decode(ae, z):
    return ae.decode(z)


@functools.lru_cache(maxsize=64)
def _jitted(graphdef, fn):
    return jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))


def _bound(module, fn):
    """``fn(module, *args)`` jitted with the weights as an argument (not baked-in constants).

    Compilations are shared by every module of the same structure and ``fn``.
    """
    graphdef, state = nnx.split(module)
    jitted = _jitted(graphdef, fn)
    return lambda *args: jitted(state, *args)


def _moment_sums(ae, x, rng):
    """Per-channel sums of z and z^2 over a batch of pixels."""
    z = sample_latent(*ae.encode(x), rng)
    return jnp.sum(z, axis=(0, 2, 3)), jnp.sum(jnp.square(z), axis=(0, 2, 3))


def fold_shift(ae: AutoencoderKL, shift) -> None:
    """Make ``ae`` encode ``z - shift`` and decode that as it decoded ``z`` (in place, exact)."""
    shift = jnp.asarray(shift, jnp.float32)
    q, post = ae.quant_conv, ae.post_quant_conv
    q.bias[...] = q.bias[...].at[:ae.z_channels].add(-shift)  # the first half of the moments is the mean
    post.bias[...] = post.bias[...] + shift @ post.kernel[...][0, 0]


def apply_scale_info(tok: Tokenizer, info: dict) -> None:
    """Adopt a computed or stored ``scale_factor.json``: its factor and, if any, its shift."""
    tok.scale_factor = info["scale_factor"]
    if info.get("shift") is not None:
        fold_shift(tok.autoencoder, info["shift"])


def build_model(cfg, seed: int = 0, registry=None) -> TokenizerWithDisc:
    """A freshly initialised model of the tokenizer run ``cfg``, created under jit (fast) and unsharded."""
    modality = tokenizer_modality(cfg, registry)
    with nnx.use_eager_sharding(False):
        return nnx.jit(lambda: tokenizer_model_from_config(cfg.tokenizer, modality, nnx.Rngs(seed)))()


def export_tokenizer(run_dir, cfg, model: TokenizerWithDisc, step: int = 0, ema: TokenizerWithDisc | None = None):
    """Write ``model`` (and its EMA, default the model itself) as a loadable tokenizer run.

    For converted or externally trained weights: build the model with
    ``build_model(cfg)``, update its ``autoencoder``, export.
    """
    checkpoint.save_config(run_dir, cfg)
    mgr = checkpoint.manager(run_dir, keep=1, async_save=False)
    arrays = {"params": nnx.state(model, nnx.Param), "ema_params": nnx.state(ema or model, nnx.Param)}
    checkpoint.save(mgr, step, arrays, force=True)
    mgr.wait_until_finished()
    mgr.close()


def load_tokenizer(run_dir, step: int | None = None, registry=None) -> Tokenizer:
    """The EMA autoencoder of a tokenizer run (newest checkpoint unless ``step``)."""
    run_dir = os.fspath(run_dir)
    cfg = checkpoint.load_config(run_dir)
    if cfg.task != "tokenizer":
        raise ValueError(f"{run_dir}/config.json is not a tokenizer run (task={cfg.task!r})")
    modality = tokenizer_modality(cfg, registry)
    with nnx.use_eager_sharding(False):  # shapes only: the weights come from the checkpoint
        create = lambda: tokenizer_model_from_config(cfg.tokenizer, modality, nnx.Rngs(0))  # noqa: E731
        graphdef, abstract = nnx.split(nnx.eval_shape(create), nnx.Param)
    mgr = checkpoint.manager(run_dir, keep=1, async_save=False)
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint under checkpoints/; train the tokenizer first")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    restored = checkpoint.restore(mgr, step, {"ema_params": target})["ema_params"]
    mgr.close()
    if restored is None:
        raise FileNotFoundError(f"{run_dir}: checkpoint {step} has no ema_params")
    model = nnx.merge(graphdef, restored)
    info = read_scale_factor(run_dir)
    if info and info.get("step", step) != step:  # computed for other weights: recompute
        logging.warning("%s: %s is for step %s, not %d; ignoring it", run_dir, SCALE_FILE, info.get("step"), step)
        info = None
    tok = Tokenizer(model.autoencoder, modality, cfg, run_dir, int(step), None)
    if info:
        apply_scale_info(tok, info)
    return tok


# ---------------------------------------------------------------------------
# Scale factor: 1 / std of sampled training latents.
# ---------------------------------------------------------------------------


def compute_scale_factor(tok: Tokenizer, batches: Iterable[np.ndarray], seed: int = 0,
                         center: bool | None = None) -> dict:
    """Statistics of ``z = mean + sigma eps`` over ``batches`` of network-range pixels.

    ``center`` (default: the run's ``tokenizer.center_latents``) also records each
    channel's mean as ``shift``; "mean", "std" and the factor are then those of the
    centred latents, as the tokenizer encodes them once loaded (see the module doc).
    Sums run in float64 on the host, so the result does not depend on how the data
    was batched beyond the random draws.
    """
    if center is None:
        center = bool(tok.cfg.tokenizer.center_latents)
    sums = _bound(tok.autoencoder, _moment_sums)
    total = total_sq = 0.0
    per_channel = examples = 0
    rng = jax.random.key(seed)
    for i, x in enumerate(batches):
        s, sq = sums(jnp.asarray(x, jnp.float32), jax.random.fold_in(rng, i))
        total, total_sq = total + np.asarray(s, np.float64), total_sq + np.asarray(sq, np.float64)
        per_channel, examples = per_channel + len(x) * math.prod(tok.modality.latent_shape[1:]), examples + len(x)
    if not examples:
        raise ValueError(f"{tok.modality.name}: no training examples to compute the scale factor from "
                         "(is the modality present in the train split?)")
    channel_mean, channel_sq = total / per_channel, total_sq / per_channel
    shift = channel_mean if center else np.zeros_like(channel_mean)
    mean = float(np.mean(channel_mean - shift))
    std = float(np.sqrt(max(np.mean(channel_sq - 2 * shift * channel_mean + shift ** 2) - mean * mean, 0.0)))
    if not std > 0:
        raise ValueError(f"{tok.modality.name}: sampled latents have zero spread; the tokenizer is degenerate")
    info = {"modality": tok.modality.name, "scale_factor": 1.0 / std, "mean": mean, "std": std,
            "count": per_channel * len(channel_mean), "examples": examples, "step": tok.step}
    return info | {"shift": channel_mean.tolist()} if center else info


def write_scale_factor(run_dir, info: dict) -> None:
    storage.write_json(storage.path(run_dir) / SCALE_FILE, info)


def read_scale_factor(run_dir) -> dict | None:
    path = storage.path(run_dir) / SCALE_FILE
    return storage.read_json(path) if path.exists() else None
