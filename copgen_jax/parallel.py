"""Device mesh, logical-axis sharding rules, and multi-host start-up.

Model code names axes logically ("batch", "embed", "mlp", "heads", ...); the
config's ``mesh.rules`` map them to the mesh axes ("data", "fsdp", "tensor").
The same code then runs on one CPU, eight forced host devices, one GPU or a
TPU pod slice: only the config changes.
"""
from __future__ import annotations

import contextlib
import logging
import os

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")


class ShardingError(ValueError):
    """A mesh or batch that cannot be laid out on the available devices."""


def initialize_distributed() -> None:
    """Start multi-host JAX when more than one process takes part.

    TPU pods need no arguments (the TPU runtime knows its peers). Elsewhere the
    launcher sets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    (see launch/); a single process on its own starts nothing.
    """
    if jax.distributed.is_initialized():
        return
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]))
    elif env.get("TPU_WORKER_HOSTNAMES", "localhost").count(",") >= 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize()
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def mesh_shape(cfg_mesh, num_devices: int) -> dict[str, int]:
    """Resolve the config's axis sizes (one may be -1) against the device count."""
    sizes = {a: int(cfg_mesh[a]) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ShardingError(f"only one mesh axis may be -1, got {free}")
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if free:
        if num_devices % fixed:
            raise ShardingError(
                f"mesh {sizes}: {num_devices} devices are not divisible by the fixed axes' product {fixed}")
        sizes[free[0]] = num_devices // fixed
    if int(np.prod(list(sizes.values()))) != num_devices:
        raise ShardingError(
            f"mesh {sizes} needs {int(np.prod(list(sizes.values())))} devices but {num_devices} are available; "
            f"set --config.mesh.data=-1 or change the axis sizes")
    return sizes


def make_mesh(cfg_mesh, devices=None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    sizes = mesh_shape(cfg_mesh, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


# Every logical axis name the models use; any the rules leave out is replicated.
LOGICAL_AXES = ("batch", "tokens", "embed", "act_embed", "mlp", "heads", "patch", "norm", "conv_in", "conv_out")


def rules_from_config(cfg_mesh) -> tuple:
    rules = {name: tuple(t) if isinstance(t, (list, tuple)) else t for name, t in cfg_mesh.rules}
    for name, target in rules.items():
        for axis in (target if isinstance(target, tuple) else (target,)):
            if axis is not None and axis not in MESH_AXES:
                raise ShardingError(f"rule {name!r} -> {axis!r}: mesh axes are {MESH_AXES}")
    return tuple(rules.items()) + tuple((n, None) for n in LOGICAL_AXES if n not in rules)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules):
    """Mesh and logical rules for everything traced inside."""
    with jax.set_mesh(mesh), flax_spmd.logical_axis_rules(rules):
        yield


logical_rules = flax_spmd.logical_axis_rules


def logical_spec(axes) -> P:
    """Logical axis names -> PartitionSpec under the active rules."""
    return flax_spmd.get_pspec(P(*axes), ())


def constrain(x, axes):
    """Sharding constraint by logical axes; a no-op without an active mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not flax_spmd.get_logical_axis_rules():
        return x
    spec = logical_spec(axes)
    if mesh.are_all_axes_explicit:
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, spec)


def constrain_shardings(tree, shardings):
    """``tree`` constrained to the matching tree of shardings (None: unconstrained)."""
    if shardings is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, shardings)


def state_shardings(state, mesh: Mesh, rules):
    """NamedSharding of every array of an NNX state, from its logical axes under ``rules``."""
    with flax_spmd.logical_axis_rules(rules):
        return nnx.get_named_sharding(state, mesh)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading axis over the batch axes (data, fsdp); the rest replicated."""
    with flax_spmd.logical_axis_rules(_current_or_default_rules()):
        spec = logical_spec(("batch",) + (None,) * (ndim - 1))
    return NamedSharding(mesh, spec)


def _current_or_default_rules():
    return flax_spmd.get_logical_axis_rules() or (("batch", ("data", "fsdp")),)


def check_batch(global_batch: int, mesh: Mesh, microbatches: int = 1) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if microbatches < 1:
        raise ShardingError(f"train.microbatches={microbatches}: use 1 or more")
    if global_batch % (shards * microbatches):
        into = f" into {microbatches} micro-batches" if microbatches > 1 else ""
        raise ShardingError(
            f"global batch {global_batch} cannot be split{into} over data x fsdp = {shards} shards; "
            f"use a multiple of {shards * microbatches}")
    if global_batch % jax.process_count():
        raise ShardingError(f"global batch {global_batch} is not divisible by {jax.process_count()} processes")


def create_sharded(ctor, mesh: Mesh | None, rules):
    """Build an NNX module with every parameter placed per its logical axes.

    Under a mesh, construction runs inside jit so each device materialises
    only its own shard (a 1B-parameter model never exists whole on one host).
    Without a mesh, parameters are created unsharded (tests, conversion).
    """
    if mesh is None:
        with nnx.use_eager_sharding(False):
            return ctor()
    with use_mesh(mesh, rules):
        return nnx.jit(ctor)()


def abstract_model(ctor, mesh: Mesh | None = None, rules=()):
    """Shapes (and shardings under a mesh) of a module, allocating nothing."""
    if mesh is None:
        with nnx.use_eager_sharding(False):
            return nnx.eval_shape(ctor)
    with use_mesh(mesh, rules):
        return nnx.eval_shape(ctor)


def param_shardings(model, mesh: Mesh, rules):
    """NamedSharding of every parameter under ``rules``."""
    return state_shardings(nnx.state(model, nnx.Param), mesh, rules)


def abstract_mesh(cfg_mesh, num_devices: int | None = None) -> jax.sharding.AbstractMesh:
    """A mesh of the configured shape without needing its devices (for --describe).

    ``num_devices`` resolves a -1 axis; without one the config's sizes are taken as they are.
    """
    if num_devices is None:
        num_devices = int(np.prod([max(int(cfg_mesh[a]), 1) for a in MESH_AXES]))
    sizes = mesh_shape(cfg_mesh, num_devices)
    return jax.sharding.AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                                     axis_types=(AxisType.Auto,) * 3)


def bytes_per_device(abstract_state, mesh, rules) -> int:
    """Parameter bytes one device holds under the rules, computed from shapes only."""
    with flax_spmd.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(abstract_state)
    total = 0
    for var, spec in zip(_variables(abstract_state), _variables(specs)):
        shard = NamedSharding(mesh, spec.get_value()).shard_shape(var.shape)
        total += int(np.prod(shard)) * np.dtype(var.dtype).itemsize
    return total


def _variables(tree):
    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
