"""The PatchGAN discriminator used, from a configured step on, to sharpen tokenizers.

The reference's NLayerDiscriminator (pix2pix): a 4x4 stride-2 conv + LeakyReLU(0.2),
then ``n_layers - 1`` stride-2 convs and one stride-1 conv (no bias), each with
batch normalisation and LeakyReLU, widths ``ndf * min(2**n, 8)``, then a 4x4
stride-1 conv to one logit per patch. Every conv pads by 1. Conv kernels start
from N(0, 0.02), norm scales from N(1, 0.02).

The discriminator is only ever run in training mode, where batch normalisation
uses the statistics of the batch at hand; its running averages are never read.
``BatchStatNorm`` keeps exactly that behaviour and nothing else, so the model
holds parameters only (what the generic training loop optimises).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from copgen_jax.models.layers import Conv, param

_normal_002 = nnx.initializers.normal(0.02)


def _scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class BatchStatNorm(nnx.Module):
    """Batch normalisation with the current batch's statistics (eps 1e-5, biased variance)."""

    def __init__(self, channels, *, rngs, eps=1e-5):
        self.scale = param(rngs, _scale_init, (channels,), ("norm",))
        self.bias = param(rngs, nnx.initializers.zeros_init(), (channels,), ("norm",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=(0, 1, 2))
        var = jnp.square(x32 - mean).mean(axis=(0, 1, 2))
        return ((x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]).astype(x.dtype)


class NLayerDiscriminator(nnx.Module):
    """(B, H, W, C) NHWC images -> (B, h, w, 1) patch logits."""

    def __init__(self, in_channels, *, ndf=64, n_layers=3, rngs: nnx.Rngs, dtype=jnp.float32):
        widths = [ndf * min(2 ** n, 8) for n in range(n_layers + 1)]
        convs = [Conv(in_channels, ndf, 4, 2, 1, rngs=rngs, dtype=dtype, kernel_init=_normal_002)]
        norms = []
        for n in range(1, n_layers + 1):
            stride = 2 if n < n_layers else 1
            convs.append(Conv(widths[n - 1], widths[n], 4, stride, 1, rngs=rngs, dtype=dtype, use_bias=False,
                              kernel_init=_normal_002))
            norms.append(BatchStatNorm(widths[n], rngs=rngs))
        convs.append(Conv(widths[n_layers], 1, 4, 1, 1, rngs=rngs, dtype=dtype, kernel_init=_normal_002))
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.n_layers = n_layers

    def __call__(self, x):
        h = nnx.leaky_relu(self.convs[0](x), 0.2)
        for conv, norm in zip(self.convs[1:-1], self.norms):
            h = nnx.leaky_relu(norm(conv(h)), 0.2)
        return self.convs[-1](h).astype(jnp.float32)


def min_input_size(n_layers: int) -> int:
    """Smallest square input that still yields at least one patch logit."""
    size = 1
    for _ in range(2):  # undo the two stride-1 k4 p1 convs (each removes one pixel)
        size += 1
    for _ in range(n_layers):  # undo the stride-2 k4 p1 convs: out = floor(in / 2)
        size *= 2
    return size
