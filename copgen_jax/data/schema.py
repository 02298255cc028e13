"""What a shard record holds: schemas, Example (de)serialisation, statistics, TFDS metadata.

Two kinds of shard, both TFRecord files of ``tf.train.Example``, driven by the
modality registry:

* pixel shards: per present modality ``"<name>"`` = float32 normalised pixels
  (``m.pixel_shape``, flattened);
* latent-moment shards: per present image/categorical modality
  ``"<name>/mean"`` and ``"<name>/logvar"`` (``m.latent_shape``), per scalar
  modality ``"<name>"`` (3,).

Both carry ``"<name>/present"`` (int64 0/1) for every registry modality, and
the footprint's metadata: ``key``, ``cell_id``, ``split``, ``crs``, ``date``
(bytes), ``observation``, ``row``, ``col`` (int64), ``transform`` (6 float32,
rasterio Affine a..f) and ``transform64`` (the same 6 numbers as little-endian
float64 bytes, because float32 cannot hold a UTM northing to the metre).
An absent modality has no value (builders that cannot omit a feature, like
TFDS, write an empty list); the presence flag is what readers trust.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from copgen_jax.data import tfrecord
from copgen_jax.modalities import Registry

PIXELS, LATENTS = "pixels", "latents"
SPLITS = ("train", "test")
TEXT_FIELDS = ("key", "cell_id", "split", "crs", "date")
INT_FIELDS = ("observation", "row", "col")


class ShardFormatError(ValueError):
    """A record that does not match the schema its registry implies."""


def value_features(registry: Registry, kind: str) -> dict[str, tuple[int, ...]]:
    """{feature name: shape} of the float features that carry modality values."""
    if kind not in (PIXELS, LATENTS):
        raise ValueError(f"shard kind must be {PIXELS!r} or {LATENTS!r}, got {kind!r}")
    out = {}
    for m in registry:
        if kind == PIXELS or m.is_scalar:
            out[m.name] = m.pixel_shape
        else:
            out[f"{m.name}/mean"] = out[f"{m.name}/logvar"] = m.latent_shape
    return out


def schema(registry: Registry, kind: str) -> dict[str, dict[str, Any]]:
    """Every feature of a record: {name: {"dtype", "shape"}} (values flattened on disk)."""
    out = {k: {"dtype": "string", "shape": []} for k in TEXT_FIELDS + ("transform64",)}
    out.update({k: {"dtype": "int64", "shape": []} for k in INT_FIELDS})
    out["transform"] = {"dtype": "float32", "shape": [6]}
    for m in registry:
        out[f"{m.name}/present"] = {"dtype": "int64", "shape": []}
    for name, shape in value_features(registry, kind).items():
        out[name] = {"dtype": "float32", "shape": list(shape)}
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------
# Records <-> Examples.
# ---------------------------------------------------------------------------


def metadata_features(record: Mapping[str, Any]) -> dict[str, Any]:
    """The footprint metadata as Example features (checked, with a clear error)."""
    key = record.get("key", "<no key>")
    missing = [k for k in TEXT_FIELDS + INT_FIELDS + ("transform",) if k not in record]
    if missing:
        raise ShardFormatError(f"footprint record {key!r} lacks {missing}; every reader must set them")
    if record["split"] not in SPLITS:
        raise ShardFormatError(f"footprint record {key!r}: split {record['split']!r} is not one of {SPLITS}")
    transform = np.asarray(record["transform"], np.float64).reshape(-1)
    if transform.shape != (6,):
        raise ShardFormatError(f"footprint record {key!r}: transform needs 6 numbers (Affine a..f), "
                               f"got {transform.size}")
    out = {k: str(record[k]) for k in TEXT_FIELDS}
    out.update({k: np.array([int(record[k])], np.int64) for k in INT_FIELDS})
    out["transform"] = transform.astype(np.float32)
    out["transform64"] = transform.astype("<f8").tobytes()
    return out


def pixel_features(record: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """A footprint record (physical units) -> pixel-shard features (normalised).

    Modalities the registry does not know are left out (the registry chooses
    what a dataset holds); a modality in ``pixels`` with the wrong shape or
    NaNs raises ``ModalityError`` naming it, with the record key prepended.
    """
    out = metadata_features(record)
    pixels = record.get("pixels", {})
    for m in registry:
        present = m.name in pixels
        out[f"{m.name}/present"] = np.array([int(present)], np.int64)
        if present:
            try:
                out[m.name] = m.normalize(pixels[m.name]).reshape(-1)
            except ValueError as e:
                raise type(e)(f"footprint record {record['key']!r}: {e}") from e
    return out


def latent_features(meta: Mapping[str, Any], registry: Registry, present: Mapping[str, bool],
                    mean: Mapping[str, np.ndarray], logvar: Mapping[str, np.ndarray],
                    scalars: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Latent-moment features for one footprint: ``meta`` is a decoded record's metadata."""
    out = metadata_features(meta)
    for m in registry:
        on = bool(present[m.name])
        out[f"{m.name}/present"] = np.array([int(on)], np.int64)
        if not on:
            continue
        if m.is_scalar:
            out[m.name] = _checked(scalars[m.name], m.pixel_shape, m.name, meta["key"])
        else:
            out[f"{m.name}/mean"] = _checked(mean[m.name], m.latent_shape, m.name + "/mean", meta["key"])
            out[f"{m.name}/logvar"] = _checked(logvar[m.name], m.latent_shape, m.name + "/logvar", meta["key"])
    return out


def _checked(x, shape, what, key):
    x = np.asarray(x, np.float32)
    if x.shape != tuple(shape):
        raise ShardFormatError(f"record {key!r}: {what} has shape {x.shape}, expected {tuple(shape)}")
    return x.reshape(-1)


def decode_metadata(ex: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata of a decoded Example as a footprint-record-like dict (exact transform)."""
    out = {k: ex[k][0].decode() for k in TEXT_FIELDS}
    out.update({k: int(ex[k][0]) for k in INT_FIELDS})
    exact = ex.get("transform64")
    transform = np.frombuffer(exact[0], "<f8") if exact else np.asarray(ex["transform"], np.float64)
    out["transform"] = tuple(float(v) for v in transform)
    return out


def decode_record(data: bytes, registry: Registry, kind: str, where: str = "") -> dict[str, Any]:
    """Bytes of one record -> metadata plus ``present`` and ``values`` ({feature: shaped array}).

    Values of absent modalities are omitted; ``where`` (file and record index)
    goes into any error.
    """
    ex = tfrecord.decode_example(data)
    out = decode_metadata(ex) if "key" in ex else {}
    out["present"] = present_flags(ex, registry, where)
    out["values"] = {}
    for name, shape in value_features(registry, kind).items():
        if out["present"][name.split("/")[0]]:
            out["values"][name] = value(ex, name, shape, where)
    return out


def present_flags(ex: Mapping[str, Any], registry: Registry, where: str = "") -> dict[str, bool]:
    flags = {}
    for m in registry:
        flag = ex.get(f"{m.name}/present")
        if flag is None or len(flag) != 1:
            raise ShardFormatError(
                f"{where}: no '{m.name}/present' flag: the shard was built for another registry "
                f"(this one has {', '.join(registry.names)}); rebuild it or use the config it was built with")
        flags[m.name] = bool(flag[0])
    return flags


def value(ex: Mapping[str, Any], name: str, shape, where: str = "") -> np.ndarray:
    """One present float feature, reshaped; a missing or wrong-sized one is an error."""
    flat = ex.get(name)
    size = math.prod(shape)
    if flat is None or len(flat) != size:
        got = "nothing" if flat is None else f"{len(flat)} values"
        raise ShardFormatError(f"{where}: '{name}' is flagged present but holds {got}, "
                               f"expected {size} = {tuple(shape)}; the shard does not match this registry")
    return np.asarray(flat, np.float32).reshape(shape)


# ---------------------------------------------------------------------------
# Statistics: mergeable per-feature moments (Chan et al.), JSON in and out.
# ---------------------------------------------------------------------------


class Statistics:
    """Per float feature: records present, and mean/std/min/max of its values."""

    def __init__(self, data: Mapping[str, Mapping[str, float]] | None = None):
        self._s = {k: dict(v) for k, v in (data or {}).items()}

    def add(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1)
        if not x.size:
            return
        mean = float(x.mean())
        self._merge(name, {"present": 1, "n": x.size, "mean": mean, "m2": float(((x - mean) ** 2).sum()),
                           "min": float(x.min()), "max": float(x.max())})

    def add_features(self, features: Mapping[str, Any], names) -> None:
        for name in names:
            if name in features:
                self.add(name, features[name])

    def _merge(self, name, b):
        a = self._s.get(name)
        if a is None:
            self._s[name] = dict(b)
            return
        n = a["n"] + b["n"]
        delta = b["mean"] - a["mean"]
        a["m2"] += b["m2"] + delta * delta * a["n"] * b["n"] / n
        a["mean"] += delta * b["n"] / n
        a.update(n=n, present=a["present"] + b["present"], min=min(a["min"], b["min"]),
                 max=max(a["max"], b["max"]))

    def merge(self, other: "Statistics") -> "Statistics":
        for name, b in other._s.items():
            self._merge(name, b)
        return self

    def state(self) -> dict:
        return {k: dict(v) for k, v in sorted(self._s.items())}

    def summary(self) -> dict:
        """What the manifest shows: present count, mean, std, min, max."""
        return {k: {"present": v["present"], "mean": v["mean"], "std": math.sqrt(v["m2"] / v["n"]),
                    "min": v["min"], "max": v["max"]} for k, v in sorted(self._s.items())}


# ---------------------------------------------------------------------------
# TFDS metadata, so tfds.builder_from_directory reads shards written without TF.
# ---------------------------------------------------------------------------

_TFDS = "tensorflow_datasets.core.features."


def tfds_features_json(registry: Registry, kind: str) -> dict:
    """``features.json``: a FeaturesDict matching ``schema`` (value features ragged: absent = empty)."""
    ragged = set(value_features(registry, kind))
    feats = {}
    for name, spec in schema(registry, kind).items():
        if name in TEXT_FIELDS:
            feats[name] = {"pythonClassName": _TFDS + "text_feature.Text", "text": {}}
            continue
        dims = ["-1"] if name in ragged else [str(d) for d in spec["shape"]]
        cls = "scalar.Scalar" if spec["dtype"] == "int64" else "tensor_feature.Tensor"
        feats[name] = {"pythonClassName": _TFDS + cls, "tensor": {
            "dtype": spec["dtype"], "encoding": "none", "shape": {"dimensions": dims} if dims else {}}}
    return {"featuresDict": {"features": feats}, "pythonClassName": _TFDS + "features_dict.FeaturesDict"}


def tfds_dataset_info(name: str, version: str, splits: Mapping[str, Mapping[str, Any]],
                      description: str = "") -> dict:
    """``dataset_info.json`` for ``splits`` = {split: {"shard_lengths": [...], "bytes": n}}."""
    return {
        "description": description,
        "fileFormat": "tfrecord",
        "moduleName": "copgen_jax.datasets.tfds_builder",
        "name": name,
        "splits": [{"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "name": split,
                    "numBytes": str(info["bytes"]), "shardLengths": [str(n) for n in info["shard_lengths"]]}
                   for split, info in splits.items()],
        "version": version,
    }


def shard_name(name: str, split: str, index: int, count: int) -> str:
    """TFDS's file naming: ``<name>-<split>.tfrecord-00003-of-00010``."""
    return f"{name}-{split}.tfrecord-{index:05d}-of-{count:05d}"
