"""The U-ViT backbone (SPEC §4): one token sequence over all modalities.

Sequence = one time token per modality (its own diffusion timestep), then every
modality's patch tokens, in registry (sorted-name) order, plus a learned
positional embedding. Post-LayerNorm blocks with long skips between the "in"
and "out" halves. A per-modality head maps tokens back to latents.

The forward pass takes dicts keyed by modality name. A modality left out of
the dict is physically dropped from the sequence (its positional rows are not
gathered), and a per-sample ``present`` mask removes modalities from attention
for some samples only; the two agree exactly, which is what makes sampling
with dropped modalities fast.

Parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ``patch``,
...) that ``copgen_jax.parallel`` maps to mesh axes with the config's rules.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from copgen_jax import parallel
from copgen_jax.modalities import Modality, Registry
from copgen_jax.models import attention
from copgen_jax.models.layers import dense, layer_norm, param, torch_uniform, trunc_normal, zeros

class Attention(nnx.Module):
    """Multi-head self-attention; fused qkv without bias, projection with bias.

    The qkv kernel is stored as (D, 3, heads, head_dim) so that tensor
    parallelism splits whole heads; it is the release's (3D, D) weight
    transposed and reshaped. The core (``copgen_jax.models.attention``) is the
    config's ``model.attention``.
    """

    def __init__(self, dim, heads, rngs, dtype, attention_dtype, ground_bias=0.0, impl="auto"):
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = param(rngs, trunc_normal, (dim, 3, heads, self.head_dim), ("embed", None, "heads", None))
        self.proj = param(rngs, trunc_normal, (heads, self.head_dim, dim), ("heads", None, "embed"))
        self.proj_bias = param(rngs, zeros, (dim,), ("embed",))
        # Learned per-head slopes of a ground-distance penalty on the logits (2-D ALiBi);
        # they start at ground_bias, ground_bias / 2, ... so heads range from local to wide.
        self.ground_slopes = param(rngs, lambda *_: ground_bias * 0.5 ** jnp.arange(heads, dtype=jnp.float32),
                                    (heads,), ("heads",)) if ground_bias else None
        self.dtype, self.attention_dtype, self.impl = dtype, attention_dtype, impl

    def __call__(self, x, key_mask, distance=None):
        qkv = jnp.einsum("bld,dthk->tblhk", x.astype(self.dtype), self.qkv[...].astype(self.dtype))
        bias = None
        if self.ground_slopes is not None:
            bias = self.ground_slopes[...][:, None, None] * distance[None]
        out = attention.attend(qkv[0], qkv[1], qkv[2], key_mask, bias, impl=self.impl,
                               logits_dtype=self.attention_dtype)
        out = jnp.einsum("blhk,hkd->bld", out, self.proj[...].astype(self.dtype))
        return out + self.proj_bias[...].astype(self.dtype)


class Mlp(nnx.Module):
    def __init__(self, dim, hidden, rngs, dtype):
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), rngs, dtype=dtype)
        self.fc2 = dense(hidden, dim, ("mlp", "embed"), rngs, dtype=dtype)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Post-LN block; with ``skip`` it first fuses the long-skip input."""

    def __init__(self, dim, heads, mlp_ratio, rngs, *, skip=False, dtype=jnp.float32,
                 attention_dtype=jnp.float32, ground_bias=0.0, attention_impl="auto"):
        if skip:
            self.skip_linear = dense(2 * dim, dim, (None, "embed"), rngs, dtype=dtype)
            self.norm1 = layer_norm(dim, rngs, dtype=dtype)
        else:
            self.skip_linear = self.norm1 = None
        self.norm2 = layer_norm(dim, rngs, dtype=dtype)
        self.attn = Attention(dim, heads, rngs, dtype, attention_dtype, ground_bias, attention_impl)
        self.norm3 = layer_norm(dim, rngs, dtype=dtype)
        self.mlp = Mlp(dim, dim * mlp_ratio, rngs, dtype)

    def __call__(self, x, key_mask, skip=None, distance=None):
        if self.skip_linear is not None:
            x = self.norm1(self.skip_linear(jnp.concatenate([x, skip], axis=-1)))
        x = self.norm2(x + self.attn(x, key_mask, distance))
        x = self.norm3(x + self.mlp(x))
        return parallel.constrain(x, ("batch", "tokens", "act_embed"))


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding with [cos, sin] halves (UniDiffuser layout)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def ground_centres(registry: Registry) -> tuple[np.ndarray, np.ndarray]:
    """Where each token of the full sequence lies on the footprint: (num_tokens, 2) centres
    (y, x) and a (num_tokens,) mask of the tokens that have a place.

    Every image modality covers the same ground at its own resolution, so token
    centres are placed on one frame (units: tokens of the finest grid): a 10 m S2
    token and the 20 m, 60 m or DEM tokens over the same ground share a centre.
    Time rows and scalar tokens have no place.
    """
    finest = max((m.grid[0] for m in registry if not m.is_scalar), default=1)
    centres, placed = [np.zeros((len(registry), 2))], [np.zeros(len(registry), bool)]
    for m in registry:
        if m.is_scalar:
            centres.append(np.zeros((m.num_tokens, 2)))
            placed.append(np.zeros(m.num_tokens, bool))
            continue
        gh, gw = m.grid
        y, x = np.meshgrid((np.arange(gh) + 0.5) * finest / gh, (np.arange(gw) + 0.5) * finest / gw, indexing="ij")
        centres.append(np.stack([y.ravel(), x.ravel()], 1))
        placed.append(np.ones(m.num_tokens, bool))
    return np.concatenate(centres), np.concatenate(placed)


def ground_sincos(registry: Registry, dim: int, base: float = 10000.0) -> np.ndarray:
    """(num_tokens, dim) 2-D sin-cos code of each token's place on the footprint; zeros
    for the tokens without one (see ``ground_centres``)."""
    if dim % 4:
        raise ValueError(f"a ground position code needs hidden % 4 == 0, got {dim}")
    centres, placed = ground_centres(registry)
    freqs = base ** (-np.arange(dim // 4) / (dim // 4))
    args = [centres[:, i:i + 1] * freqs for i in range(2)]
    code = np.concatenate([f(a) for a in args for f in (np.sin, np.cos)], axis=1)
    return (code * placed[:, None]).astype(np.float32)


def ground_distance(registry: Registry) -> np.ndarray:
    """(num_tokens, num_tokens) distance on the ground between token centres, in tokens of
    the finest grid; 0 for every pair with a token that has no place."""
    centres, placed = ground_centres(registry)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    return (dist * (placed[:, None] & placed[None])).astype(np.float32)


def patchify(x, p):
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C) in ``(h w) (p1 p2 C)`` order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.transpose(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x, c, h, w, p):
    """Inverse of ``patchify``."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, c)
    return x.transpose(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


POS_INITS = ("random", "ground")


def _pos_init(kind: str, registry: Registry, hidden: int):
    """The learned positional table's start: small noise (the release), or noise plus the
    ground code, so that tokens over the same ground start out alike across modalities
    instead of having to learn that alignment."""
    if kind not in POS_INITS:
        raise ValueError(f"model.pos_init={kind!r}: use one of {POS_INITS}")
    if kind == "random":
        return trunc_normal

    def init(key, shape, dtype=jnp.float32):
        return trunc_normal(key, shape, dtype) + jnp.asarray(ground_sincos(registry, hidden), dtype)[None]
    return init


class UViT(nnx.Module):
    """COP-GEN's U-ViT over the modalities of ``registry``."""

    def __init__(self, registry: Registry, *, hidden, depth, heads, mlp_ratio=4, rngs: nnx.Rngs,
                 dtype=jnp.float32, attention_dtype=jnp.float32, remat_policy="none", scan_blocks=False,
                 attention_impl="auto", pos_init="random", ground_bias=0.0):
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        if remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model.remat_policy={remat_policy!r}: use one of {tuple(REMAT_POLICIES)}")
        attention.resolve(attention_impl, platform="cpu", dtype=dtype, has_bias=bool(ground_bias))  # checks
        self.registry, self.hidden = registry, hidden
        self.remat_policy, self.scan_blocks = remat_policy, scan_blocks
        self.dtype = dtype
        block = functools.partial(Block, hidden, heads, mlp_ratio, rngs, dtype=dtype, attention_dtype=attention_dtype,
                                  ground_bias=ground_bias, attention_impl=attention_impl)
        self.ground_bias = ground_bias
        self.pos_embed = param(rngs, _pos_init(pos_init, registry, hidden), (1, registry.num_tokens, hidden),
                                (None, "tokens", "embed"))
        self.patch_embeds = nnx.List([
            dense(m.patch_dim, hidden, ("patch", "embed"), rngs, init=torch_uniform(m.patch_dim),
                  bias_init=torch_uniform(m.patch_dim), dtype=dtype) for m in registry])
        self.in_blocks = nnx.List([block() for _ in range(depth // 2)])
        self.mid_block = block()
        self.out_blocks = nnx.List([block(skip=True) for _ in range(depth // 2)])
        self.norm = layer_norm(hidden, rngs, dtype=dtype)
        self.decoder_preds = nnx.List([dense(hidden, m.patch_dim, ("embed", "patch"), rngs, dtype=dtype)
                                       for m in registry])

    # -- sequence layout -------------------------------------------------------
    def _layout(self, names):
        """Positional rows of the kept modalities: time tokens, then patches."""
        reg = self.registry
        offsets = np.cumsum([len(reg)] + [m.num_tokens for m in reg])
        time_rows = [reg.index(n) for n in names]
        patch_rows = [np.arange(offsets[reg.index(n)], offsets[reg.index(n)] + reg[n].num_tokens) for n in names]
        return np.asarray(time_rows + list(np.concatenate(patch_rows)), np.int32)

    def _check(self, latents, timesteps):
        for name, x in latents.items():
            m = self.registry[name]
            if tuple(x.shape[1:]) != m.latent_shape:
                raise ValueError(f"{name}: latent has shape {tuple(x.shape)}, expected (B, {m.latent_shape})")
            if name not in timesteps:
                raise ValueError(f"{name}: no timestep given")
        return [m.name for m in self.registry if m.name in latents]

    # -- the block stack -----------------------------------------------------
    def _blocks(self, x, key_mask, distance):
        """in blocks (keeping skips), mid block, out blocks (taking them back, last first).

        With ``scan_blocks`` each half runs as one ``lax.scan`` over its blocks' stacked
        parameters, so the compiled step holds one block's code and its size and compile
        time stop growing with depth; the parameters themselves stay one module per block
        (the release's layout, which conversion and checkpoints keep).
        """
        apply = _block_apply(self.remat_policy)

        def run(blk, x, skip=None):
            graphdef, state = nnx.split(blk)
            return apply(graphdef, state, x, key_mask, skip, distance)

        if not self.scan_blocks:
            skips = []
            for blk in self.in_blocks:
                x = run(blk, x)
                skips.append(x)
            x = run(self.mid_block, x)
            for blk in self.out_blocks:
                x = run(blk, x, skips.pop())
            return x
        in_def, in_state = _stacked(self.in_blocks)
        out_def, out_state = _stacked(self.out_blocks)

        def down(x, state):
            x = apply(in_def, state, x, key_mask, None, distance)
            return x, x

        def up(x, state_skip):
            state, skip = state_skip
            return apply(out_def, state, x, key_mask, skip, distance), None
        x, skips = jax.lax.scan(down, x, in_state)
        x = run(self.mid_block, x)
        x, _ = jax.lax.scan(up, x, (out_state, skips[::-1]))
        return x

    def __call__(self, latents: dict, timesteps: dict, present: dict | None = None) -> dict:
        names = self._check(latents, timesteps)
        mods: list[Modality] = [self.registry[n] for n in names]
        idx = [self.registry.index(n) for n in names]
        batch = latents[names[0]].shape[0]

        time_tokens = [timestep_embedding(timesteps[n], self.hidden) for n in names]
        patch_tokens = [self.patch_embeds[i](patchify(latents[m.name].reshape(batch, *m.latent_shape), m.patch))
                        for i, m in zip(idx, mods)]
        x = jnp.concatenate([jnp.stack(time_tokens, 1).astype(self.dtype)] + patch_tokens, axis=1)
        layout = self._layout(names)
        x = x + self.pos_embed[...][:, layout].astype(self.dtype)
        x = parallel.constrain(x, ("batch", "tokens", "act_embed"))

        key_mask = None
        if present is not None:
            # Each modality's presence covers its time token and its patch tokens.
            per_mod = [present[n].astype(bool) for n in names]
            key_mask = jnp.concatenate([jnp.stack(per_mod, 1)] +
                                       [jnp.repeat(p[:, None], m.num_tokens, 1) for p, m in zip(per_mod, mods)], 1)

        distance = jnp.asarray(ground_distance(self.registry)[layout][:, layout]) if self.ground_bias else None
        x = self._blocks(x, key_mask, distance)
        x = self.norm(x)

        out, start = {}, len(names)
        for i, m in zip(idx, mods):
            tokens = x[:, start:start + m.num_tokens]
            start += m.num_tokens
            c, h, w = m.latent_shape
            out[m.name] = unpatchify(self.decoder_preds[i](tokens).astype(jnp.float32), c, h, w, m.patch)
        return out


# What a rematerialised block keeps for the backward (``model.remat_policy``); "none"
# keeps everything (no remat), "full" only the block's inputs.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _block_apply(remat_policy: str):
    """A block's forward as a pure function of (graphdef, state), rematerialised per policy."""
    def apply(graphdef, state, x, key_mask, skip, distance):
        return nnx.merge(graphdef, state)(x, key_mask, skip, distance)
    policy = REMAT_POLICIES[remat_policy]
    if remat_policy == "none":
        return apply
    return jax.checkpoint(apply, policy=policy, static_argnums=(0,))


def _stacked(blocks):
    """One graphdef and the blocks' states stacked along a new leading axis (for lax.scan)."""
    splits = [nnx.split(b) for b in blocks]
    return splits[0][0], jax.tree.map(lambda *xs: jnp.stack(xs), *[state for _, state in splits])


def backbone_from_config(cfg, registry: Registry, rngs: nnx.Rngs) -> UViT:
    mc = cfg.model
    return UViT(registry, hidden=mc.hidden, depth=mc.depth, heads=mc.heads, mlp_ratio=mc.mlp_ratio,
                rngs=rngs, dtype=jnp.dtype(mc.dtype), attention_dtype=jnp.dtype(mc.attention_dtype),
                remat_policy=mc.remat_policy, scan_blocks=mc.scan_blocks, attention_impl=mc.attention,
                pos_init=mc.pos_init, ground_bias=mc.ground_bias)
