"""Orbax checkpoints of a run: save, restore, resume, export.

A run's workdir (a local path or a URI such as ``gs://bucket/run``; Orbax reaches
URIs through ``etils.epath``, as ``config.json`` does: ``copgen_jax.storage``)
holds ``config.json`` and ``checkpoints/<step>/`` with the items
  params      model parameters (nnx.Param state as a pure dict)
  ema_params  their exponential moving average (what sampling uses)
  opt_state   optimizer state (absent in exported / converted checkpoints)
  data        the input iterator's state, so a resumed run sees the same batches
Arrays restore directly into their shardings on the current mesh.
"""
from __future__ import annotations

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from copgen_jax import defaults, storage

ARRAY_ITEMS = ("params", "ema_params", "opt_state")


def checkpoint_dir(workdir) -> epath.Path:
    # absolute: Orbax's array reads refuse relative paths (CopGen.load("runs/demo"))
    return storage.absolute(workdir) / "checkpoints"


def manager(workdir, *, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def _is_grain(iterator) -> bool:
    import grain
    return isinstance(iterator, grain.DatasetIterator)


def _data_args(iterator, restore: bool):
    """Grain iterators save one state file per process (multi-host safe); others one JSON."""
    if _is_grain(iterator):
        import grain
        return (grain.checkpoint.CheckpointRestore if restore else grain.checkpoint.CheckpointSave)(iterator)
    return ocp.args.JsonRestore() if restore else ocp.args.JsonSave(iterator.get_state())


def save(mgr: ocp.CheckpointManager, step: int, arrays: dict, iterator=None, force=False) -> bool:
    """Save ``arrays`` (item name -> pytree) and the input iterator's position at ``step``."""
    items = {name: ocp.args.StandardSave(tree) for name, tree in arrays.items()}
    if iterator is not None:
        items["data"] = _data_args(iterator, restore=False)
    return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def available_items(workdir, step: int) -> set[str]:
    path = checkpoint_dir(workdir) / str(step)
    return {p.name for p in path.iterdir() if p.is_dir()} if path.exists() else set()


def restore(mgr: ocp.CheckpointManager, step: int, targets: dict, iterator=None):
    """Restore the items in ``targets`` (name -> abstract pytree with shardings).

    Items the checkpoint lacks (e.g. opt_state of a converted model) come back
    as None so the caller can start them fresh. With ``iterator``, its position
    is restored too (in place).
    """
    present = available_items(mgr.directory.parent, step)
    items = {name: ocp.args.StandardRestore(t) for name, t in targets.items() if name in present}
    if iterator is not None and "data" in present:
        items["data"] = _data_args(iterator, restore=True)
    restored = mgr.restore(step, args=ocp.args.Composite(**items))
    if "data" in items and not _is_grain(iterator):
        iterator.set_state(restored["data"])
    return {name: restored.get(name) if name in items else None for name in targets}


def abstract_like(tree):
    """ShapeDtypeStructs (keeping shardings) to restore into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def save_config(workdir, cfg: ml_collections.ConfigDict) -> None:
    if jax.process_index() != 0:
        return
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.path(workdir) / "config.json", cfg.to_json_best_effort(indent=2))


def load_config(workdir) -> ml_collections.ConfigDict:
    path = storage.path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir} a copgen_jax run directory?")
    return defaults.with_defaults(_tuples(storage.read_json(path)))


def _tuples(obj):
    """JSON turns tuples into lists; configs use tuples for immutable sequences."""
    if isinstance(obj, dict):
        return {k: _tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_tuples(v) for v in obj)
    return obj


def latest_step(workdir) -> int | None:
    d = checkpoint_dir(workdir)
    if not d.exists():
        return None
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()]
    return max(steps) if steps else None
