"""Random draws per example: every example's numbers come from its own key.

A step's key becomes one key per example of the global batch (``example_keys``), and
each draw maps over them. What an example draws then depends only on the step and on
its index in the global batch, not on how the batch is split: one batch, micro-batches
(``train.microbatches``) or shards over devices all draw the same numbers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def example_keys(rng, batch: int):
    """(batch,) keys: example i's is ``fold_in(rng, i)``."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))


def split(keys, num: int) -> list:
    """``num`` independent (batch,) key arrays from (batch,) keys."""
    parts = jax.vmap(lambda k: jax.random.split(k, num))(keys)
    return [parts[:, i] for i in range(num)]


def normal(keys, shape=(), dtype=jnp.float32):
    """(batch, *shape) standard normals, one draw of ``shape`` per example."""
    return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)


def uniform(keys, shape=()):
    """(batch, *shape) uniforms in [0, 1)."""
    return jax.vmap(lambda k: jax.random.uniform(k, shape))(keys)


def randint(keys, low: int, high: int, shape=()):
    """(batch, *shape) integers in [low, high)."""
    return jax.vmap(lambda k: jax.random.randint(k, shape, low, high))(keys)
