"""The modality tokenizer: a KL autoencoder with the Stable-Diffusion layout (SPEC §3).

One autoencoder per image or categorical modality. The encoder maps
``(C, H, W)`` network-range pixels to the moments (mean, log-variance) of a
diagonal Gaussian over an ``(z, H/f, W/f)`` latent, ``f = 2**(len(ch_mult)-1)``;
the decoder maps a latent back to pixels (categorical modalities: class logits).

Layout (names follow the reference release so its weights map one to one):
  encoder.conv_in, encoder.down[i].block[j], encoder.down[i].downsample,
  encoder.mid.{block_1, attn_1, block_2}, encoder.norm_out, encoder.conv_out,
  quant_conv (2z -> 2z, 1x1), post_quant_conv (z -> z, 1x1),
  decoder.conv_in, decoder.mid.*, decoder.up[i].block[j] (num_res_blocks + 1
  per level), decoder.up[i].upsample, decoder.norm_out, decoder.conv_out.
A ResnetBlock holds norm1, conv1, norm2, conv2 and, when its width changes,
nin_shortcut (1x1). Attention holds norm, q, k, v, proj_out (1x1 convs).

Arrays are NHWC inside (the natural layout for XLA convolutions); the public
methods take and return NCHW, the registry's (C, H, W) convention.
GroupNorm uses gcd(32, channels) groups (eps 1e-6): 32 for every official
width, and a valid grouping for the tiny widths of tests.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from copgen_jax.modalities import CATEGORICAL, Modality, Registry, registry_from_config
from copgen_jax.models.discriminator import NLayerDiscriminator
from copgen_jax.models.layers import Conv, param

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # the release clamps the encoder's log-variance so


class GroupNorm(nnx.Module):
    """GroupNorm over NHWC with statistics in fp32; gcd(groups, channels) groups.

    A group of one channel is an instance norm: it erases each channel's
    per-image mean, so a narrow autoencoder (``ch`` <= 32 with the release's 32
    groups) can no longer carry an image's overall brightness through its
    normalised path. ``tokenizer.norm_groups`` keeps several channels per group.
    """

    def __init__(self, channels, *, rngs, groups=32, eps=1e-6):
        self.groups = math.gcd(groups, channels)
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones_init(), (channels,), ("norm",))
        self.bias = param(rngs, nnx.initializers.zeros_init(), (channels,), ("norm",))

    def __call__(self, x):
        b, h, w, c = x.shape
        g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
        mean = g.mean(axis=(1, 2, 4), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class ResnetBlock(nnx.Module):
    """norm -> SiLU -> conv, twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, cin, cout, *, rngs, dtype=jnp.float32, groups=32):
        self.norm1 = GroupNorm(cin, rngs=rngs, groups=groups)
        self.conv1 = Conv(cin, cout, rngs=rngs, dtype=dtype)
        self.norm2 = GroupNorm(cout, rngs=rngs, groups=groups)
        self.conv2 = Conv(cout, cout, rngs=rngs, dtype=dtype)
        self.nin_shortcut = Conv(cin, cout, 1, rngs=rngs, dtype=dtype) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))  # dropout is 0 in every released config
        skip = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return skip + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all positions (1x1-conv projections)."""

    def __init__(self, c, *, rngs, dtype=jnp.float32, groups=32):
        self.norm = GroupNorm(c, rngs=rngs, groups=groups)
        self.q, self.k, self.v, self.proj_out = (Conv(c, c, 1, rngs=rngs, dtype=dtype) for _ in range(4))

    def __call__(self, x):
        b, h, w, c = x.shape
        y = self.norm(x)
        q, k, v = (f(y).reshape(b, h * w, c) for f in (self.q, self.k, self.v))
        logits = jnp.einsum("bic,bjc->bij", q.astype(jnp.float32), k.astype(jnp.float32)) * c ** -0.5
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bij,bjc->bic", attn, v).reshape(b, h, w, c)
        return x + self.proj_out(out)


class Downsample(nnx.Module):
    """Stride-2 3x3 conv after zero padding (0, 1) on height and width (asymmetric)."""

    def __init__(self, c, *, rngs, dtype=jnp.float32):
        self.conv = Conv(c, c, 3, 2, ((0, 1), (0, 1)), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c, *, rngs, dtype=jnp.float32):
        self.conv = Conv(c, c, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Mid(nnx.Module):
    """resnet, attention, resnet at the lowest resolution."""

    def __init__(self, c, *, rngs, dtype=jnp.float32, groups=32):
        self.block_1 = ResnetBlock(c, c, rngs=rngs, dtype=dtype, groups=groups)
        self.attn_1 = AttnBlock(c, rngs=rngs, dtype=dtype, groups=groups)
        self.block_2 = ResnetBlock(c, c, rngs=rngs, dtype=dtype, groups=groups)

    def __call__(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nnx.Module):
    """One resolution level: ``block`` (a list of ResnetBlocks) and an optional resampler."""

    def __init__(self, blocks, resample_name=None, resample=None):
        self.block = nnx.List(blocks)
        self.resample_name = resample_name
        if resample_name:
            setattr(self, resample_name, resample)

    def __call__(self, x):
        for block in self.block:
            x = block(x)
        return getattr(self, self.resample_name)(x) if self.resample_name else x


class Encoder(nnx.Module):
    def __init__(self, in_channels, ch, ch_mult, num_res_blocks, z_channels, double_z=True, *, rngs,
                 dtype=jnp.float32, groups=32):
        self.conv_in = Conv(in_channels, ch, rngs=rngs, dtype=dtype)
        levels, cin = [], ch
        for i, mult in enumerate(ch_mult):
            cout = ch * mult
            blocks = [ResnetBlock(cin if j == 0 else cout, cout, rngs=rngs, dtype=dtype, groups=groups)
                      for j in range(num_res_blocks)]
            last = i == len(ch_mult) - 1
            levels.append(Level(blocks, None if last else "downsample",
                                None if last else Downsample(cout, rngs=rngs, dtype=dtype)))
            cin = cout
        self.down = nnx.List(levels)
        self.mid = Mid(cin, rngs=rngs, dtype=dtype, groups=groups)
        self.norm_out = GroupNorm(cin, rngs=rngs, groups=groups)
        self.conv_out = Conv(cin, 2 * z_channels if double_z else z_channels, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(nnx.silu(self.norm_out(self.mid(h))))


class Decoder(nnx.Module):
    def __init__(self, out_channels, ch, ch_mult, num_res_blocks, z_channels, *, rngs, dtype=jnp.float32,
                 groups=32):
        cin = ch * ch_mult[-1]
        self.conv_in = Conv(z_channels, cin, rngs=rngs, dtype=dtype)
        self.mid = Mid(cin, rngs=rngs, dtype=dtype, groups=groups)
        levels = [None] * len(ch_mult)
        for i in reversed(range(len(ch_mult))):  # built top-down, indexed like the encoder
            cout = ch * ch_mult[i]
            blocks = [ResnetBlock(cin if j == 0 else cout, cout, rngs=rngs, dtype=dtype, groups=groups)
                      for j in range(num_res_blocks + 1)]
            levels[i] = Level(blocks, "upsample" if i else None, Upsample(cout, rngs=rngs, dtype=dtype) if i else None)
            cin = cout
        self.up = nnx.List(levels)
        self.norm_out = GroupNorm(cin, rngs=rngs, groups=groups)
        self.conv_out = Conv(cin, out_channels, rngs=rngs, dtype=dtype)

    def features(self, z):
        """Everything before ``conv_out`` (the GAN's adaptive weight needs this split)."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return nnx.silu(self.norm_out(h))

    def __call__(self, z):
        return self.conv_out(self.features(z))


def _nhwc(x):
    return jnp.moveaxis(x, -3, -1)


def _nchw(x):
    return jnp.moveaxis(x, -1, -3)


class AutoencoderKL(nnx.Module):
    """KL autoencoder: ``encode`` -> (mean, logvar), ``decode`` -> pixels or logits (NCHW)."""

    def __init__(self, in_channels, out_channels, *, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                 z_channels=8, rngs: nnx.Rngs, dtype=jnp.float32, norm_groups=32):
        self.z_channels = z_channels
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder(in_channels, ch, tuple(ch_mult), num_res_blocks, z_channels, rngs=rngs, dtype=dtype,
                               groups=norm_groups)
        self.quant_conv = Conv(2 * z_channels, 2 * z_channels, 1, rngs=rngs, dtype=dtype)
        self.post_quant_conv = Conv(z_channels, z_channels, 1, rngs=rngs, dtype=dtype)
        self.decoder = Decoder(out_channels, ch, tuple(ch_mult), num_res_blocks, z_channels, rngs=rngs, dtype=dtype,
                               groups=norm_groups)

    def moments_nhwc(self, x):
        moments = self.quant_conv(self.encoder(x)).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def encode(self, x):
        """(B, C, H, W) pixels -> (mean, logvar), each (B, z, H/f, W/f)."""
        mean, logvar = self.moments_nhwc(_nhwc(x))
        return _nchw(mean), _nchw(logvar)

    def decoder_features(self, z_nhwc):
        return self.decoder.features(self.post_quant_conv(z_nhwc))

    def decode(self, z):
        """(B, z, h, w) latent -> (B, C, h f, w f) pixels (categorical: logits)."""
        return _nchw(self.decoder(self.post_quant_conv(_nhwc(z))).astype(jnp.float32))

    def __call__(self, x, rng=None, sample=True):
        """Reconstruct: returns (output, mean, logvar); ``sample`` draws z, else z = mean."""
        mean, logvar = self.encode(x)
        z = sample_latent(mean, logvar, rng) if sample else mean
        return self.decode(z), mean, logvar


def sample_latent(mean, logvar, rng):
    """z = mean + exp(logvar / 2) * eps."""
    if rng is None:
        raise ValueError("sampling a latent needs an rng; pass rng=jax.random.key(...) or sample=False")
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def outputs_to_pixels(modality: Modality, y):
    """Decoder output -> network-range pixels: categorical logits become one-hot in {-1, 1}."""
    if modality.kind != CATEGORICAL:
        return y
    return 2.0 * jax.nn.one_hot(jnp.argmax(y, axis=-3), y.shape[-3], axis=-3, dtype=y.dtype) - 1.0


def autoencoder_from_config(tcfg, modality: Modality, rngs: nnx.Rngs) -> AutoencoderKL:
    """The autoencoder ``cfg.tokenizer`` describes, sized for ``modality``.

    Checks that the layout's reduction and latent width are the registry's, so
    latent shards always have ``modality.latent_shape``.
    """
    if modality.is_scalar:
        raise ValueError(f"{modality.name} is a scalar modality: it has no tokenizer (scalars are not encoded)")
    ch_mult = tuple(tcfg.ch_mult)
    factor = 2 ** (len(ch_mult) - 1)
    if factor != modality.downsample:
        raise ValueError(
            f"{modality.name}: tokenizer.ch_mult={list(ch_mult)} downsamples by {factor} but the registry's "
            f"downsample is {modality.downsample} ({modality.size} px -> {modality.latent_shape[1]}); use "
            f"{1 + int(math.log2(modality.downsample))} levels in ch_mult or set modalities.downsample={factor}")
    z = tcfg.z_channels or modality.latent_channels
    if z != modality.latent_channels:
        raise ValueError(f"{modality.name}: tokenizer.z_channels={z} but the registry's latent has "
                         f"{modality.latent_channels} channels; set tokenizer.z_channels=0 to follow the registry")
    channels = modality.pixel_shape[0]
    return AutoencoderKL(channels, channels, ch=tcfg.ch, ch_mult=ch_mult, num_res_blocks=tcfg.num_res_blocks,
                         z_channels=z, rngs=rngs, dtype=jnp.dtype(tcfg.dtype),
                         norm_groups=tcfg.norm_groups)


class TokenizerWithDisc(nnx.Module):
    """What the training loop optimises: the autoencoder, its optional discriminator and log-variance."""

    def __init__(self, autoencoder: AutoencoderKL, discriminator: NLayerDiscriminator | None, learn_logvar: bool):
        self.autoencoder = autoencoder
        self.discriminator = discriminator
        self.logvar = nnx.Param(jnp.zeros((), jnp.float32)) if learn_logvar else None


def tokenizer_modality(cfg, registry: Registry | None = None) -> Modality:
    registry = registry or registry_from_config(cfg)
    name = cfg.tokenizer.modality
    if not name:
        raise ValueError("tokenizer.modality is not set: pass --config.tokenizer.modality=NAME, one of "
                         + ", ".join(m.name for m in registry.spatial))
    return registry[name]


def tokenizer_model_from_config(tcfg, modality: Modality, rngs: nnx.Rngs) -> TokenizerWithDisc:
    """The tokenizer run's whole model: ``cfg.tokenizer``'s autoencoder, discriminator and log-variance."""
    disc = None
    if tcfg.disc_layers:
        disc = NLayerDiscriminator(modality.pixel_shape[0], ndf=tcfg.disc_ndf, n_layers=tcfg.disc_layers, rngs=rngs)
    return TokenizerWithDisc(autoencoder_from_config(tcfg, modality, rngs), disc, tcfg.learn_logvar)
