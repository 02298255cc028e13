"""Grain input pipelines over pixel and latent-moment schema.

    shard files (local or URIs, e.g. gs://) ─ per-process assignment (files[process_index::process_count])
      └ shard order shuffled per epoch (seeded) ─ interleave ``cycle_length`` shards
        └ window shuffle of raw records (``cfg.data.shuffle_buffer``)
          └ parse (CRC-checked reader; corrupt input raises or is skipped and counted)
            └ batch (global_batch / process_count) ─ latents: z drawn afresh per read
              └ prefetch: ``cfg.data.num_workers`` processes (0: one thread)

Latent batches are ``{"latents": {name: (B, *m.latent_shape)}, "present":
{name: (B,) bool}}`` with ``z = (mean + exp(logvar / 2) * eps) * m.scale_factor``
drawn by a Grain random map every time a record is read (scalars are their
value times the scale factor; absent modalities are zeros); with
``sample_on="device"`` the batches are the moments and ``sample_latents`` draws
z inside the jitted step instead. Pixel batches are ``{"pixels": {name:
(B, *m.pixel_shape)}, "present": ...}``. ``B`` = global batch / process count.

Resuming: the iterators are Grain ``DatasetIterator``s; ``get_state()`` is a
JSON-able dict and ``set_state(state)`` on a freshly made iterator (same
files, config and seed) continues with exactly the batch the uninterrupted run
would have produced next. Store it in the Orbax checkpoint beside the model:
one process: ``ocp.args.JsonSave(it.get_state())`` / ``JsonRestore()``; many
processes (each has its own state): ``grain.checkpoint.CheckpointSave(it)`` /
``CheckpointRestore(it)``, which writes ``process_<i>-of-<n>.json`` (see
``checkpoint_args``).
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Sequence

import grain
import jax
import numpy as np

from copgen_jax import storage
from copgen_jax.data import shards
from copgen_jax.data import schema
from copgen_jax.data import tfrecord
from copgen_jax.modalities import Registry

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Shards that cannot feed this pipeline as configured."""


# ---------------------------------------------------------------------------
# One shard file as a checkpointable Grain source.
# ---------------------------------------------------------------------------


class ShardRecords(grain.IterDataset):
    """The records of one TFRecord file as ``(path, index, bytes)``; resumes by byte offset."""

    def __init__(self, path: str, on_corrupt: str = "raise"):
        super().__init__()
        self._path, self._on_corrupt = path, on_corrupt

    def __iter__(self):
        return _ShardIterator(self._path, self._on_corrupt)

    def __str__(self):
        return f"ShardRecords({self._path})"


class _ShardIterator(grain.DatasetIterator):
    def __init__(self, path: str, on_corrupt: str):
        super().__init__()
        self._path, self._on_corrupt = path, on_corrupt
        self._state = {"offset": 0, "index": 0, "skipped": 0}
        self._reader = None

    def __next__(self):
        if self._reader is None:
            self._reader = tfrecord.TFRecordReader(self._path, on_corrupt=self._on_corrupt, **self._state)
        r = self._reader
        try:
            data = next(r)
        except StopIteration:
            if r.skipped:
                log.warning("%s: %d corrupt record(s) skipped", self._path, r.skipped)
            r.close()
            raise
        finally:
            self._state = {"offset": r.offset, "index": r.index, "skipped": r.skipped}
        return self._path, r.index - 1, data

    def get_state(self):
        return dict(self._state)

    def set_state(self, state):
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._state = {k: int(state[k]) for k in ("offset", "index", "skipped")}

    def close(self):
        if self._reader is not None:
            self._reader.close()


# ---------------------------------------------------------------------------
# Parsing (runs in the worker processes).
# ---------------------------------------------------------------------------


def parse_latent_moments(item, registry: Registry) -> dict:
    """(path, index, bytes) -> {"mean", "logvar", "present"} of the present modalities.

    Arrays are zero-copy views of the record; scalars have a mean only.
    """
    path, index, data = item
    where = f"{path}: record {index}"
    ex = tfrecord.decode_example(data)
    present = schema.present_flags(ex, registry, where)
    mean, logvar = {}, {}
    for m in registry:
        if not present[m.name]:
            continue
        if m.is_scalar:
            mean[m.name] = schema.value(ex, m.name, m.pixel_shape, where).reshape(m.latent_shape)
        else:
            mean[m.name] = schema.value(ex, f"{m.name}/mean", m.latent_shape, where)
            logvar[m.name] = schema.value(ex, f"{m.name}/logvar", m.latent_shape, where)
    return {"mean": mean, "logvar": logvar, "present": present}


def parse_pixels(item, registry: Registry) -> dict:
    """(path, index, bytes) -> {"pixels", "present"}; absent modalities zero."""
    path, index, data = item
    where = f"{path}: record {index}"
    ex = tfrecord.decode_example(data)
    present = schema.present_flags(ex, registry, where)
    pixels = {m.name: schema.value(ex, m.name, m.pixel_shape, where) if present[m.name]
              else np.zeros(m.pixel_shape, np.float32) for m in registry}
    return {"pixels": pixels, "present": present}


class SampleLatents(grain.transforms.RandomMap):
    """Moments -> ``z = (mean + exp(logvar/2) eps) * scale_factor``, fresh eps at every read.

    Runs per record, before batching, so workers stack only ``z`` and the batch
    is the last step (Grain then hands it over in shared memory).
    """

    def __init__(self, registry: Registry):
        self._registry = registry

    def random_map(self, record, rng: np.random.Generator):
        # SFC64 draws normals faster than Grain's Philox; seeding it from that
        # generator keeps every draw a function of (seed, position in stream).
        fast = np.random.Generator(np.random.SFC64(rng.integers(1 << 63)))
        latents = {}
        for m in self._registry:
            mean = record["mean"].get(m.name)
            if mean is None:  # absent
                latents[m.name] = np.zeros(m.latent_shape, np.float32)
            elif m.is_scalar:
                latents[m.name] = mean * np.float32(m.scale_factor)
            else:
                z = fast.standard_normal(mean.shape, dtype=np.float32)
                z *= np.exp(np.float32(0.5) * record["logvar"][m.name])
                z += mean
                z *= np.float32(m.scale_factor)
                latents[m.name] = z
        return {"latents": latents, "present": record["present"]}


# ---------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------


def assign_shards(files: Sequence[str], process_index: int, process_count: int) -> list[str]:
    """This process's share of the non-empty shards: every ``process_count``-th, sorted."""
    files = sorted(str(f) for f in files)
    missing = [f for f in files if not storage.path(f).exists()]
    if missing:
        raise FileNotFoundError(f"shard files not found: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    nonempty = [f for f in files if storage.path(f).stat().length > 0]
    if len(nonempty) < process_count:
        raise DataError(f"{len(nonempty)} non-empty shards for {process_count} processes: each process needs "
                        "its own shard; rebuild with more shards (e.g. fewer cells per shard)")
    return nonempty[process_index::process_count]


def _seeds(seed: int, process_index: int) -> list[int]:
    """Independent 32-bit seeds for shard order, window shuffle and sampling, per process."""
    return [int(s) for s in np.random.SeedSequence([seed, process_index]).generate_state(3)]


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise DataError(f"global batch {global_batch} is not divisible by {process_count} processes")
    return global_batch // process_count


def make_dataset(files: Sequence[str], parse: Callable, *, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                 shuffle_buffer: int = 1024, cycle_length: int = 4, prefetch: int = 2,
                 on_corrupt: str = "raise", num_epochs: int | None = None,
                 sample: grain.transforms.RandomMap | None = None) -> grain.IterDataset:
    """The Grain dataset behind both iterators (``batch_size`` is per process)."""
    mine = assign_shards(files, process_index, process_count)
    order_seed, window_seed, map_seed = _seeds(seed, process_index)
    ds = grain.MapDataset.source(mine).shuffle(seed=order_seed).repeat(num_epochs)
    ds = ds.map(functools.partial(ShardRecords, on_corrupt=on_corrupt))
    ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=max(1, min(cycle_length, len(mine))))
    if shuffle_buffer > 1:
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=shuffle_buffer, seed=window_seed)
    ds = ds.map(parse)
    if sample is not None:
        ds = ds.random_map(sample, seed=map_seed)
    ds = ds.batch(batch_size, drop_remainder=True)
    if num_workers > 0:
        return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                           per_worker_buffer_size=prefetch))
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)


def _options(cfg, files, process_index, process_count, seed, batch_size, shuffle_buffer):
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    d = cfg.data
    return dict(files=files, batch_size=_local_batch(batch_size or cfg.train.global_batch, pc),
                seed=cfg.seed if seed is None else seed, process_index=pi, process_count=pc,
                num_workers=d.num_workers,
                shuffle_buffer=d.shuffle_buffer if shuffle_buffer is None else shuffle_buffer,
                cycle_length=d.cycle_length, prefetch=d.prefetch,
                on_corrupt=d.on_corrupt)


def make_latent_iterator(cfg, registry: Registry, files: Sequence[str], *, process_index: int | None = None,
                         process_count: int | None = None, seed: int | None = None,
                         batch_size: int | None = None, num_epochs: int | None = None,
                         shuffle_buffer: int | None = None, sample_on: str = "host"):
    """Per-process latent batches for the backbone (see the module doc); a Grain DatasetIterator.

    ``cfg`` supplies ``seed``, ``train.global_batch`` and ``data.{num_workers,
    shuffle_buffer, cycle_length, prefetch, on_corrupt}``; keyword arguments
    override them (``batch_size`` is global too: each process gets
    ``batch_size / process_count``). ``num_epochs=None`` repeats forever. ``sample_on="device"``
    yields the moments instead (``{"mean", "logvar", "present"}``, absent
    modalities zero) for ``sample_latents`` inside the jitted step, which
    spares the host the normal draws (about half of its work per record).
    """
    if sample_on not in ("host", "device"):
        raise ValueError(f"sample_on must be 'host' or 'device', got {sample_on!r}")
    opts = _options(cfg, files, process_index, process_count, seed, batch_size, shuffle_buffer)
    if sample_on == "device":
        return iter(make_dataset(parse=_Parse(parse_dense_moments, registry), num_epochs=num_epochs, **opts))
    parse = _Parse(parse_latent_moments, registry)
    return iter(make_dataset(parse=parse, num_epochs=num_epochs, sample=SampleLatents(registry), **opts))


def parse_dense_moments(item, registry: Registry) -> dict:
    """Like ``parse_latent_moments``, with zeros for absent modalities (so records batch)."""
    rec = parse_latent_moments(item, registry)
    zeros = {m.name: np.zeros(m.latent_shape, np.float32) for m in registry}
    return {"mean": zeros | rec["mean"], "logvar": zeros | rec["logvar"], "present": rec["present"]}


def sample_latents(moments, keys, registry: Registry):
    """Device-side twin of ``SampleLatents`` for a batch of moments (jit-able); ``keys`` holds
    one key per example (``copgen_jax.draws``)."""
    import jax.numpy as jnp
    from copgen_jax import draws
    latents = {}
    for k, m in zip(draws.split(keys, len(registry)), registry):
        mean = moments["mean"][m.name]
        z = mean if m.is_scalar else mean + jnp.exp(0.5 * moments["logvar"][m.name]) * draws.normal(
            k, mean.shape[1:], mean.dtype)
        mask = moments["present"][m.name].reshape((-1,) + (1,) * (z.ndim - 1))
        latents[m.name] = jnp.where(mask, z * m.scale_factor, 0.0).astype(mean.dtype)
    return {"latents": latents, "present": moments["present"]}


def make_pixel_iterator(cfg, registry: Registry, files: Sequence[str], *, process_index: int | None = None,
                        process_count: int | None = None, seed: int | None = None,
                        batch_size: int | None = None, num_epochs: int | None = None,
                        shuffle_buffer: int | None = None):
    """Per-process normalised-pixel batches for tokenizer training; a Grain DatasetIterator.

    As ``make_latent_iterator``; mind the window's memory: an official pixel
    record is ~4 MB, so ``shuffle_buffer`` records cost that many times 4 MB
    per worker (e.g. 64 for tokenizer training, not the backbone's 1024).
    """
    opts = _options(cfg, files, process_index, process_count, seed, batch_size, shuffle_buffer)
    return iter(make_dataset(parse=_Parse(parse_pixels, registry), num_epochs=num_epochs, **opts))


class _Parse(grain.transforms.Map):
    """A picklable parse step bound to a registry (it crosses into worker processes)."""

    def __init__(self, fn, registry):
        self._fn, self._registry = fn, registry

    def map(self, item):
        return self._fn(item, self._registry)


def checkpoint_args(iterator, restore: bool = False):
    """Orbax args for the iterator, one JSON file per process (``grain.checkpoint``)."""
    return (grain.checkpoint.CheckpointRestore if restore else grain.checkpoint.CheckpointSave)(iterator)


def global_batch(local_batch, mesh: jax.sharding.Mesh, sharding=None):
    """Per-process numpy batches -> global ``jax.Array``s, batch axis over the mesh's data axes.

    ``sharding`` (a ``NamedSharding``, or a function ``ndim -> NamedSharding``)
    defaults to the leading axis split over the mesh axes ``data`` and ``fsdp``
    (those the mesh has), everything else replicated.
    """
    if sharding is None:
        axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
        spec = jax.sharding.PartitionSpec(axes or None)
        sharding = jax.sharding.NamedSharding(mesh, spec)
    pick = sharding if callable(sharding) else (lambda ndim: sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(pick(np.ndim(x)), np.asarray(x)),
                        local_batch)


# ---------------------------------------------------------------------------
# Latent-moment shards (written by tokenizer encoding).
# ---------------------------------------------------------------------------


def _encode_group(unit, *, pixel_dir, registry, encode, batch_size):
    """One pixel shard group -> latent features (same metadata, split and order)."""
    for split in schema.SPLITS:
        path = os.fspath(storage.path(pixel_dir) / schema.shard_name(unit["name"], split, unit["group"], unit["groups"]))
        records = (schema.decode_record(data, registry, schema.PIXELS, where=f"{path}: record {i}")
                   for i, data in enumerate(tfrecord.read_records(path)))
        batch = []
        for rec in records:
            batch.append(rec)
            if len(batch) == batch_size:
                yield from _encode_batch(batch, registry, encode)
                batch = []
        if batch:
            yield from _encode_batch(batch, registry, encode)


def _encode_batch(batch, registry, encode):
    present = {m.name: np.array([r["present"][m.name] for r in batch]) for m in registry}
    pixels = {m.name: np.stack([r["values"].get(m.name, np.zeros(m.pixel_shape, np.float32)) for r in batch])
              for m in registry.spatial}
    moments = encode(pixels, present)
    for i, rec in enumerate(batch):
        scalars = {m.name: rec["values"][m.name] for m in registry if m.is_scalar and rec["present"][m.name]}
        mean = {n: np.asarray(moments[n][0][i]) for n in moments}
        logvar = {n: np.asarray(moments[n][1][i]) for n in moments}
        yield schema.latent_features(rec, registry, rec["present"], mean, logvar, scalars)


def write_latent_shards(out: str, registry: Registry, pixel_dir: str,
                        encode: Callable[[dict, dict], dict], *, batch_size: int = 32, name: str | None = None,
                        progress: bool = True, source: dict | None = None) -> dict:
    """Encode a pixel shard set into latent-moment shards under ``out`` (resumable, with manifest).

    ``encode(pixels, present)`` gets ``{name: (B, *m.pixel_shape)}`` for every
    spatial modality (absent entries zero) and ``{name: (B,) bool}``, and
    returns ``{name: (mean, logvar)}`` each ``(B, *m.latent_shape)``. Shard
    ``g`` of each split holds the records of pixel shard ``g``, in order.
    """
    pixels = shards.load_manifest(pixel_dir)
    groups = len(pixels["splits"]["train"]["shards"])
    units = [{"name": pixels["name"], "group": g, "groups": groups} for g in range(groups)]
    produce = functools.partial(_encode_group, pixel_dir=pixel_dir, registry=registry, encode=encode,
                                batch_size=batch_size)
    return shards.build_shards(
        out, units, produce, registry=registry, kind=schema.LATENTS, name=name or pixels["name"] + "_latents",
        source=source or {"pixels": os.fspath(storage.absolute(pixel_dir))}, progress=progress,
        description=f"COP-GEN latent moments of {pixels['name']}")
