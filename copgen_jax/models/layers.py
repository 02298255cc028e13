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


class Dense(nnx.Module):
    """y = x W + b with logical axes on W; params fp32, compute in ``dtype``."""

    def __init__(self, din, dout, axes, rngs, *, bias=True, init=trunc_normal, bias_init=zeros,
                 dtype=jnp.float32):
        self.kernel = param(rngs, init, (din, dout), axes)
        self.bias = param(rngs, bias_init, (dout,), axes[1:]) if bias else None
        self.dtype = dtype

    def __call__(self, x):
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype) if self.bias is not None else y


class LayerNorm(nnx.Module):
    """LayerNorm (eps 1e-5) whose statistics are always taken in fp32."""

    def __init__(self, dim, rngs, eps=1e-5):
        self.scale = param(rngs, ones, (dim,), ("norm",))
        self.bias = param(rngs, zeros, (dim,), ("norm",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


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
