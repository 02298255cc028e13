"""Layers shared by the backbone, the tokenizer and the discriminator.

Parameters are fp32 and carry logical axis names (``embed``, ``conv_in``, ...)
that ``copgen_jax.parallel`` maps to mesh axes; compute runs in each layer's
``dtype``. Initialisers follow the reference release (truncated normal 0.02
for the backbone, PyTorch's default uniform for convolutions).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def param(rngs, init, shape, axes, dtype=jnp.float32):
    """A parameter drawn from ``init`` with logical ``axes``."""
    return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape, dtype))


def fixed(value, axes):
    """A parameter holding ``value``, with logical axes like ``param``'s."""
    return nnx.Param(nnx.with_partitioning(lambda *_: value, axes)(None, value.shape, value.dtype))


def torch_uniform(fan_in):
    """PyTorch's default Conv/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for kernel and bias alike."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def dense(din, dout, axes, rngs, *, bias=True, init=trunc_normal, bias_init=zeros, dtype=jnp.float32) -> nnx.Linear:
    """``nnx.Linear`` (y = x W + b) with logical ``axes`` on W and the output axis on b; fp32
    parameters, compute in ``dtype``. Its ``kernel`` / ``bias`` are the release's Linear weight
    transposed and its bias (``copgen_jax.convert``)."""
    return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nnx.with_partitioning(init, axes),
                      bias_init=nnx.with_partitioning(bias_init, axes[1:]), rngs=rngs)


def layer_norm(dim, rngs, *, dtype=jnp.float32, eps=1e-5) -> nnx.LayerNorm:
    """``nnx.LayerNorm`` as PyTorch's (eps 1e-5, variance of the centred input), statistics in
    fp32 whatever the compute ``dtype``; ``scale`` / ``bias`` carry the logical axis ``norm``."""
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
                         scale_init=nnx.with_partitioning(ones, ("norm",)),
                         bias_init=nnx.with_partitioning(zeros, ("norm",)), rngs=rngs)


class Conv(nnx.Module):
    """2-D convolution on NHWC; kernel (kh, kw, in, out), fp32 parameters."""

    def __init__(self, cin, cout, kernel=3, stride=1, padding=None, *, rngs, dtype=jnp.float32,
                 use_bias=True, kernel_init=None):
        shape, fan_in = (kernel, kernel, cin, cout), cin * kernel * kernel
        kernel_axes = (None, None, "conv_in", "conv_out")
        if kernel_init is None and use_bias:
            # PyTorch's default draws kernel and bias from the same U(+-1/sqrt(fan_in)): one
            # draw serves both (half the random-number ops to compile at initialisation).
            both = torch_uniform(fan_in)(rngs.params(), (math.prod(shape) + cout,))
            self.kernel = fixed(both[:-cout].reshape(shape), kernel_axes)
            self.bias = fixed(both[-cout:], ("conv_out",))
        else:
            self.kernel = param(rngs, kernel_init or torch_uniform(fan_in), shape, kernel_axes)
            self.bias = param(rngs, torch_uniform(fan_in), (cout,), ("conv_out",)) if use_bias else None
        pad = kernel // 2 if padding is None else padding
        self.padding = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
        self.stride, self.dtype = stride, dtype

    def apply(self, x, kernel):
        """The convolution with an explicit kernel (adaptive GAN weight differentiates w.r.t. it)."""
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), (self.stride, self.stride), self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...].astype(self.dtype) if self.bias is not None else y

    def __call__(self, x):
        return self.apply(x, self.kernel[...])
