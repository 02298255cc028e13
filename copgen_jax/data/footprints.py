"""Pixel shards read back as footprint records in physical units (for evaluation and reports).

The inverse of ``copgen_jax/datasets/build.py``: each record comes back as
``{key, cell_id, observation, row, col, split, crs, transform, date, pixels}`` with
``pixels`` = {present modality: array in physical units (``m.denormalize``)}.
"""
from __future__ import annotations

import collections
from typing import Iterator

from copgen_jax.data import shards
from copgen_jax.data import schema
from copgen_jax.data import tfrecord
from copgen_jax.modalities import Registry


def read_footprints(pixel_dir: str, registry: Registry, split: str = "test") -> Iterator[dict]:
    """Every record of ``split`` in the shard set at ``pixel_dir``, in shard order."""
    for path in shards.shard_files(pixel_dir, split):
        for index, data in enumerate(tfrecord.read_records(path)):
            rec = schema.decode_record(data, registry, schema.PIXELS, where=f"{path} record {index}")
            values = rec.pop("values")
            present = rec.pop("present")
            rec["pixels"] = {n: registry[n].denormalize(values[n]) for n, here in present.items() if here}
            yield rec


def by_location(records) -> dict[tuple, list[dict]]:
    """Records grouped per footprint location (cell, row, col), observations in order."""
    groups = collections.defaultdict(list)
    for rec in records:
        groups[(rec["cell_id"], rec["row"], rec["col"])].append(rec)
    return {k: sorted(v, key=lambda r: r["observation"]) for k, v in sorted(groups.items())}
