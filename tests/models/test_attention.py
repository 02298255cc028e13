"""The attention cores agree with the materialised softmax, forward and backward."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from copgen_jax import parallel
from copgen_jax.models import attention


def reference(q, k, v, key_mask=None, bias=None):
    """softmax(q k^T / sqrt(d) - bias) v, written out in float64 numpy."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits - np.asarray(bias, np.float64)[None]
    if key_mask is not None:
        logits = np.where(np.asarray(key_mask)[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), v)


def inputs(length=300, batch=2, heads=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((batch, length, heads, dim)), jnp.float32) for _ in range(3))
    key_mask = jnp.asarray(rng.random((batch, length)) > 0.3).at[:, 0].set(True)
    bias = jnp.asarray(rng.random((heads, length, length)) * 2, jnp.float32)
    return q, k, v, key_mask, bias


@pytest.mark.parametrize("impl", ["xla", "chunked", "dot_product"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cores_equal_the_softmax(impl, with_bias):
    q, k, v, key_mask, bias = inputs()  # 300 tokens: the chunked core pads its last block
    bias = bias if with_bias else None
    out = attention.attend(q, k, v, key_mask, bias, impl=impl)
    np.testing.assert_allclose(np.asarray(out), reference(q, k, v, key_mask, bias), rtol=2e-5, atol=2e-5)


def test_splash_equals_the_softmax_at_present_queries():
    """The splash kernel (interpreted off TPU) over a padded, masked sequence."""
    q, k, v, key_mask, _ = inputs(length=200, batch=1, heads=2, dim=128)
    out = np.asarray(attention.attend(q, k, v, key_mask, impl="splash"))
    want = reference(q, k, v, key_mask)
    present = np.asarray(key_mask)
    np.testing.assert_allclose(out[present], want[present], rtol=1e-4, atol=1e-4)


def test_chunked_gradients_equal_the_materialised_ones():
    q, k, v, key_mask, bias = inputs(length=260)

    def loss(impl):
        return jax.grad(lambda q, k, v, b: jnp.sum(jnp.sin(attention.attend(q, k, v, key_mask, b, impl=impl))),
                        argnums=(0, 1, 2, 3))(q, k, v, bias)
    for got, want in zip(loss("chunked"), loss("xla")):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_chunked_keeps_chunks_not_the_whole_logits():
    """Compiled forward + backward: the chunked core's temporaries are a fraction of xla's."""
    q, k, v, key_mask, _ = inputs(length=1024, batch=2, heads=8, dim=16)

    def temp_bytes(impl):
        f = jax.jit(jax.grad(lambda q: jnp.sum(attention.attend(q, k, v, key_mask, impl=impl))))
        return f.lower(q).compile().memory_analysis().temp_size_in_bytes
    assert temp_bytes("chunked") * 3 < temp_bytes("xla")


def test_auto_picks_per_platform():
    bf16 = jnp.bfloat16
    assert attention.resolve("auto", platform="tpu", dtype=bf16, has_bias=False) == "splash"
    big = attention.XLA_LOGITS_BYTES + 1
    assert attention.resolve("auto", platform="tpu", dtype=bf16, has_bias=True, logits_bytes=big) == "chunked"
    assert attention.resolve("auto", platform="gpu", dtype=bf16, has_bias=False) == "dot_product"
    assert attention.resolve("auto", platform="gpu", dtype=jnp.float32, has_bias=False, logits_bytes=big) == "chunked"
    assert attention.resolve("auto", platform="cpu", dtype=jnp.float32, has_bias=False, logits_bytes=big) == "chunked"
    assert attention.resolve("auto", platform="cpu", dtype=jnp.float32, has_bias=True) == "xla"  # small logits
    with pytest.raises(ValueError, match="takes no ground bias"):
        attention.resolve("splash", platform="tpu", dtype=bf16, has_bias=True)
    with pytest.raises(ValueError, match="use one of"):
        attention.resolve("flash", platform="cpu", dtype=bf16, has_bias=False)


def test_splash_shards_over_the_mesh_batch_axis():
    """Under a 2-device FSDP mesh the kernel runs per shard (shard_map) and still agrees."""
    q, k, v, key_mask, _ = inputs(length=130, batch=2, heads=2, dim=128, seed=1)
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=2, tensor=1)), jax.devices()[:2])
    rules = (("batch", ("data", "fsdp")), ("heads", "tensor"))
    with parallel.use_mesh(mesh, rules):
        out = jax.jit(lambda *a: attention.attend(*a, impl="splash"))(q, k, v, key_mask)
    present = np.asarray(key_mask)
    np.testing.assert_allclose(np.asarray(out)[present], reference(q, k, v, key_mask)[present], rtol=1e-4, atol=1e-4)
