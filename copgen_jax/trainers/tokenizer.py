"""Training a modality tokenizer (SPEC §3) with the generic loop of ``copgen_jax.trainers.loop``.

The loss, as the release computes it (LDM's ``LPIPSWithDiscriminator``):
  rec   = l1_weight |x - y| + l2_weight (x - y)^2 per element (images), or the
          per-pixel cross-entropy of the decoder's logits (categorical, default;
          ``categorical_loss="regression"`` treats the one-hot like an image, as
          the release does);
  nll   = sum(rec / exp(s) + s) / B, with ``s`` a scalar log-variance: 0, as in the
          release (which declares it but never optimises it), or learned (``learn_logvar``);
  kl    = sum over latent elements of 0.5 (mu^2 + sigma^2 - 1 - log sigma^2), mean over the batch;
  loss  = nll + kl_weight kl [+ d_weight g_loss + d_loss once step >= disc_start].
The hinge PatchGAN runs under ONE optimizer over all parameters: the generator
term sees the discriminator's parameters through ``stop_gradient`` and the
discriminator term sees stopped inputs, so each part receives only its own
gradient. ``d_weight`` = ||grad nll|| / (||grad g_loss|| + 1e-4), both w.r.t. the
decoder's last conv kernel, clipped to [0, 1e4], times ``disc_weight``, stopped.
The release alternates an autoencoder step and a discriminator step on the same
batch; here both happen in one step. The perceptual (LPIPS) term needs
pretrained VGG weights that cannot be downloaded here: ``perceptual_weight``
must stay 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from copgen_jax import draws
from copgen_jax.models.discriminator import min_input_size
from copgen_jax.models.tokenizer import (TokenizerWithDisc, outputs_to_pixels, tokenizer_model_from_config,
                                         tokenizer_modality)
from copgen_jax.modalities import CATEGORICAL, Registry, registry_from_config
from copgen_jax.data.pixels import PresentPixels, RandomPixels, preview


def _nhwc(x):
    return jnp.moveaxis(x, -3, -1)


class TokenizerTask:
    """KL autoencoder for ``cfg.tokenizer.modality``, pluggable into ``copgen_jax.trainers.loop``."""

    def __init__(self, cfg, registry: Registry | None = None):
        self.cfg, self.tcfg = cfg, cfg.tokenizer
        self.registry = registry or registry_from_config(cfg)
        self.modality = tokenizer_modality(cfg, self.registry)
        if self.tcfg.perceptual_weight:
            raise ValueError("tokenizer.perceptual_weight > 0 needs LPIPS's pretrained VGG weights, which are not "
                             "available offline; set it to 0 (the default)")
        layers = self.tcfg.disc_layers
        if layers and self.modality.size < min_input_size(layers):
            raise ValueError(f"{self.modality.name}: {self.modality.size} px is too small for a {layers}-layer "
                             f"discriminator (needs >= {min_input_size(layers)} px); lower tokenizer.disc_layers")
        choice = self.tcfg.categorical_loss
        if choice not in ("cross_entropy", "regression"):
            raise ValueError(f"tokenizer.categorical_loss={choice!r}: use 'cross_entropy' or 'regression'")
        self.categorical = self.modality.kind == CATEGORICAL
        self.cross_entropy = self.categorical and choice == "cross_entropy"
        self._reconstruct = None

    # -- model -------------------------------------------------------------------
    def create_model(self, rngs: nnx.Rngs) -> TokenizerWithDisc:
        return tokenizer_model_from_config(self.tcfg, self.modality, rngs)

    # -- loss ----------------------------------------------------------------------
    def _rec(self, y, x):
        """Per-element reconstruction term of NHWC output ``y`` against target ``x``."""
        if self.cross_entropy:
            return -jnp.sum(jax.nn.log_softmax(y, axis=-1) * (x > 0), axis=-1)
        return self.tcfg.l1_weight * jnp.abs(x - y) + self.tcfg.l2_weight * jnp.square(x - y)

    def _disc_input(self, y):
        """The discriminator compares like with like: logits become probabilities in [-1, 1]."""
        return 2.0 * jax.nn.softmax(y, axis=-1) - 1.0 if self.cross_entropy else y

    def loss(self, model: TokenizerWithDisc, batch, keys, step):
        x = _nhwc(batch["pixels"].astype(jnp.float32))
        b = x.shape[0]
        flip_keys, z_keys = draws.split(keys, 2)
        if self.tcfg.hflip:
            flip = draws.uniform(flip_keys, (1, 1, 1)) < 0.5
            x = jnp.where(flip, x[:, :, ::-1], x)
        ae = model.autoencoder
        mean, logvar = ae.moments_nhwc(x)
        h = ae.decoder_features(mean + jnp.exp(0.5 * logvar) * draws.normal(z_keys, mean.shape[1:], mean.dtype))
        y = ae.decoder.conv_out(h).astype(jnp.float32)
        s = model.logvar[...] if model.logvar is not None else jnp.zeros(())

        def nll_of(out):
            return jnp.sum(self._rec(out, x) / jnp.exp(s) + s) / b

        rec = self._rec(y, x)
        nll = nll_of(y)
        kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar) / b
        loss = nll + self.tcfg.kl_weight * kl
        metrics = {"rec_loss": rec.mean(), "nll": nll, "kl": kl, "logvar": s,
                   "latent_std": jnp.std(mean)}
        if self.categorical:
            metrics["accuracy"] = jnp.mean(jnp.argmax(y, -1) == jnp.argmax(x, -1))
        if model.discriminator is not None:
            adv, adv_metrics = self._adversarial(model, h, y, x, nll_of, step)
            loss = loss + adv
            metrics.update(adv_metrics)
        return loss, metrics

    def _adversarial(self, model, h, y, x, nll_of, step):
        """Hinge GAN terms; generator and discriminator gradients kept apart with stop_gradient."""
        disc = model.discriminator
        graphdef, state = nnx.split(disc)
        frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
        conv_out = model.autoencoder.decoder.conv_out
        h_fixed = jax.lax.stop_gradient(h)

        def g_loss_of(out):
            return -jnp.mean(frozen(self._disc_input(out)))

        def grad_at_last_layer(fn):
            return jax.grad(lambda w: fn(conv_out.apply(h_fixed, w).astype(jnp.float32)))(conv_out.kernel[...])

        g_loss = g_loss_of(y)
        d_weight = jnp.linalg.norm(grad_at_last_layer(nll_of)) / (jnp.linalg.norm(grad_at_last_layer(g_loss_of)) + 1e-4)
        d_weight = jax.lax.stop_gradient(jnp.clip(d_weight, 0.0, 1e4) * self.tcfg.disc_weight)
        factor = (step >= self.tcfg.disc_start).astype(jnp.float32)
        logits_real = disc(jax.lax.stop_gradient(x))
        logits_fake = disc(jax.lax.stop_gradient(self._disc_input(y)))
        d_loss = factor * 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))
        metrics = {"g_loss": g_loss, "d_weight": d_weight, "disc_factor": factor, "disc_loss": d_loss,
                   "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return factor * d_weight * g_loss + d_loss, metrics

    # -- data ------------------------------------------------------------------------
    def make_iterator(self, process_index, process_count, seed):
        """Per-process batches ``{"pixels": (B / processes, *pixel_shape)}`` of the tokenizer's modality."""
        source = self.cfg.data.source
        batch = self.cfg.train.global_batch
        if source == "random":
            return RandomPixels(self.modality, batch, seed, process_index, process_count,
                                num_examples=self.cfg.data.num_examples)
        if source == "shards":
            from copgen_jax.data import input_pipeline
            from copgen_jax.data import shards
            one = self.registry.subset([self.modality.name])
            records = input_pipeline.make_pixel_iterator(self.cfg, one, shards.resolve_shards(self.cfg.data.shards),
                                               process_index=process_index, process_count=process_count,
                                               seed=seed, batch_size=process_count)  # one record per process
            return PresentPixels(records, self.modality.name, batch // process_count)
        raise ValueError(f"input_pipeline.source={source!r}: a tokenizer trains on 'shards' (pixel shards) or 'random'")

    # -- previews ----------------------------------------------------------------------
    def images(self, model: TokenizerWithDisc, batch) -> dict[str, np.ndarray]:
        """Input | mean reconstruction, one row per example (first local examples), HWC uint8."""
        pixels = batch["pixels"]
        if isinstance(pixels, jax.Array):
            pixels = pixels.addressable_shards[0].data  # this process's rows; no cross-host gather
        x = np.asarray(pixels[: self.tcfg.preview_count], np.float32)
        if self._reconstruct is None:
            self._reconstruct = nnx.jit(lambda ae, x: outputs_to_pixels(self.modality, ae(x, sample=False)[0]))
        y = np.asarray(self._reconstruct(model.autoencoder, x))
        return {f"reconstruction/{self.modality.name}": preview(self.modality, x, y)}
