"""Attention cores: softmax(q k^T / sqrt(d) - bias) v over a key mask, four ways.

All take q, k, v as (batch, tokens, heads, head_dim), a (batch, tokens) key mask
(or None) and an optional (heads, tokens, tokens) additive bias (the ground bias,
subtracted from the logits), and agree to float tolerance:

  xla          the whole (tokens x tokens) logits per head, in ``logits_dtype``: fastest
               where memory is no concern (small batches, CPU).
  chunked      the same math over blocks of queries, each block rematerialised in the
               backward, so a step keeps (chunk x tokens) logits per head instead of
               (tokens x tokens); any platform, bias included.
  dot_product  ``jax.nn.dot_product_attention``: cuDNN's fused flash kernel on GPU for
               bf16/fp16, XLA elsewhere.
  splash       the Pallas splash-attention kernel on TPU (no bias), under ``shard_map``
               over the batch and head axes of the mesh; interpreted on other platforms.
  auto         splash on TPU (no bias), dot_product on GPU in bf16/fp16; elsewhere xla while
               one call's logits stay under ``XLA_LOGITS_BYTES`` (on a CPU the whole-logits
               core is the fastest: about 0.85x the chunked core's step time at D=384, batch 4),
               chunked above it.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from copgen_jax import parallel

IMPLEMENTATIONS = ("auto", "xla", "chunked", "dot_product", "splash")
QUERY_CHUNK = 128  # queries per block of the chunked core (a multiple of the TPU's 128 lanes)
SPLASH_BLOCK = 128
XLA_LOGITS_BYTES = 256 * 2 ** 20  # auto: largest (batch x heads x L x L) logits the xla core materialises


def resolve(impl: str, *, platform: str, dtype, has_bias: bool, logits_bytes: int = 0) -> str:
    """The core ``impl`` stands for on ``platform`` (``auto`` decides per platform)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={impl!r}: use one of {IMPLEMENTATIONS}")
    if impl == "splash" and has_bias:
        raise ValueError("model.attention='splash' takes no ground bias: set model.ground_bias=0 "
                         "or use model.attention='chunked'")
    if impl != "auto":
        return impl
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if platform == "tpu" and not has_bias:
        return "splash"
    if platform == "gpu" and half:
        return "dot_product"
    return "xla" if logits_bytes <= XLA_LOGITS_BYTES else "chunked"


def attend(q, k, v, key_mask=None, bias=None, *, impl="auto", logits_dtype=jnp.float32):
    """softmax(q k^T / sqrt(d) - bias, masked) v: (B, L, H, D) -> (B, L, H, D)."""
    b, length, h, _ = q.shape
    core = resolve(impl, platform=jax.default_backend(), dtype=q.dtype, has_bias=bias is not None,
                   logits_bytes=b * h * length * length * jnp.dtype(logits_dtype).itemsize)
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)  # on q, not on the (L x L) logits
    if core == "xla":
        return _softmax_values(q, k, v, key_mask, bias, logits_dtype)
    if core == "chunked":
        return _chunked(q, k, v, key_mask, bias, logits_dtype)
    if core == "dot_product":
        return _dot_product(q, k, v, key_mask, bias)
    return _splash(q, k, v, key_mask)


def _softmax_values(q, k, v, key_mask, bias, logits_dtype):
    """The materialised core. The softmax is normalised after the value product (as flash
    attention does), so the backward has no softmax-Jacobian pass over the weights."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=logits_dtype).astype(logits_dtype)
    if bias is not None:
        logits = logits - bias.astype(logits_dtype)[None]
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits_dtype).min)
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    norm = jnp.moveaxis(weights.sum(axis=-1), 1, 2)[..., None]  # (B, Q, H, 1)
    return (out / norm).astype(v.dtype)


def _chunked(q, k, v, key_mask, bias, logits_dtype, chunk=QUERY_CHUNK):
    """The materialised core over blocks of ``chunk`` queries (lax.scan), each block
    rematerialised in the backward: peak logits (B, H, chunk, L) instead of (B, H, L, L)."""
    b, length, h, d = q.shape
    if length <= chunk:
        return _softmax_values(q, k, v, key_mask, bias, logits_dtype)
    blocks = -(-length // chunk)
    pad = blocks * chunk - length
    qs = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, blocks, chunk, h, d).swapaxes(0, 1)
    biases = None
    if bias is not None:
        biases = jnp.pad(bias, ((0, 0), (0, pad), (0, 0))).reshape(h, blocks, chunk, length).swapaxes(0, 1)

    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside scan: no CSE to prevent
    def block(q_block, bias_block):
        return _softmax_values(q_block, k, v, key_mask, bias_block, logits_dtype)

    def body(_, xs):
        return None, block(*xs)
    _, out = jax.lax.scan(body, None, (qs, biases))
    return out.swapaxes(0, 1).reshape(b, blocks * chunk, h, d)[:, :length]


def _dot_product(q, k, v, key_mask, bias):
    on_gpu = jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
    terms = None
    if bias is not None:
        terms = -bias.astype(q.dtype)[None]
    if key_mask is not None and on_gpu:
        # cuDNN takes no general boolean mask: absent keys become a large negative bias.
        masked = jnp.where(key_mask[:, None, None, :], 0.0, -1e9 if q.dtype != jnp.float16 else -6e4)
        terms = masked.astype(q.dtype) if terms is None else terms + masked.astype(q.dtype)
        key_mask = None
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, bias=terms, mask=mask, scale=1.0,
                                        implementation="cudnn" if on_gpu else "xla")


def _splash(q, k, v, key_mask):
    """Splash attention per example, sharded over the mesh's batch and head axes.

    The key mask becomes segment ids (present tokens attend to present ones, absent
    ones among themselves; their outputs are unused); the sequence is padded to the
    kernel's block size with a third segment.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    b, length, h, d = q.shape
    padded = -(-length // SPLASH_BLOCK) * SPLASH_BLOCK
    segments = jnp.ones((b, length), jnp.int32) if key_mask is None else key_mask.astype(jnp.int32)
    segments = jnp.pad(segments, ((0, 0), (0, padded - length)), constant_values=2)
    qkv = [jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))).swapaxes(1, 2) for x in (q, k, v)]

    mesh = jax.sharding.get_abstract_mesh()
    batch_spec, head_spec = _splash_specs(mesh, b, h)
    local_heads = h // _axis_size(mesh, head_spec)
    kernel = splash.make_splash_mha(
        masks.MultiHeadMask([masks.FullMask((padded, padded))] * local_heads),
        block_sizes=splash.BlockSizes(block_q=SPLASH_BLOCK, block_kv=SPLASH_BLOCK, block_kv_compute=SPLASH_BLOCK,
                                      block_q_dkv=SPLASH_BLOCK, block_kv_dkv=SPLASH_BLOCK,
                                      block_kv_dkv_compute=SPLASH_BLOCK, block_q_dq=SPLASH_BLOCK,
                                      block_kv_dq=SPLASH_BLOCK),
        head_shards=1, q_seq_shards=1, interpret=jax.default_backend() != "tpu")

    def per_shard(q, k, v, segments):
        ids = splash.SegmentIds(q=segments, kv=segments)
        return jax.vmap(kernel)(q, k, v, segment_ids=ids)

    if mesh.empty:
        out = per_shard(*qkv, segments)
    else:
        spec = jax.sharding.PartitionSpec(batch_spec, head_spec, None, None)
        out = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec, jax.sharding.PartitionSpec(batch_spec)),
                            out_specs=spec, check_vma=False)(*qkv, segments)
    return out.swapaxes(1, 2)[:, :length]


def _splash_specs(mesh, batch, heads):
    """Mesh axes of the batch and the heads under the active logical rules, where they divide."""
    if mesh.empty:
        return None, None
    spec = parallel.logical_spec(("batch", "heads"))
    batch_axes, head_axes = spec[0], spec[1] if len(spec) > 1 else None
    if batch_axes is not None and batch % _axis_size(mesh, batch_axes):
        batch_axes = None
    if head_axes is not None and heads % _axis_size(mesh, head_axes):
        head_axes = None
    return batch_axes, head_axes


def _axis_size(mesh, axes) -> int:
    if axes is None or mesh.empty:
        return 1
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in axes)

