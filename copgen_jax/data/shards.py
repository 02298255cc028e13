"""Resumable, atomic writing of a shard set, its manifest and its TFDS metadata.

Work arrives as an ordered list of *units* (a Major TOM cell, an input shard
...); ``units_per_shard`` consecutive units form a *group*, and group ``g``
writes shard ``g`` of every split (TFDS naming, so a group with no record of a
split leaves an empty, valid file). A shard is written under ``.partial/`` and
moved to its final name only when complete and synced, so a final name never
holds a partial shard; a group counts as done once its marker
``.progress/group-<g>.json`` exists (written last, atomically), and a rebuild
skips done groups. ``.progress/plan.json`` pins units, registry schema and
grouping: a rebuild with a different plan into the same directory is refused.
The manifest (``manifest.json``) is written at the end from the markers:
schema, record counts, per-feature statistics, and the sha256 of every shard.
Every path may be a URI such as ``gs://bucket/set`` (``copgen_jax.storage``):
locally shards are synced before their rename; on an object store a rename is
a copy, and an object appears only once complete, so the same guarantees hold.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import json
import multiprocessing
import os
import sys
import uuid
from typing import Any, Callable, Iterable, Sequence

import tqdm

from copgen_jax import storage
from copgen_jax.data import schema
from copgen_jax.data import tfrecord
from copgen_jax.modalities import Registry

MANIFEST = "manifest.json"
PROGRESS = ".progress"
PARTIAL = ".partial"
FORMAT = "copgen-shards/1"


class BuildError(RuntimeError):
    """A build that cannot go on as asked (e.g. a different plan in the same directory)."""


write_json = storage.write_json  # atomic: readers see the old file or the new one
_write_json = write_json  # older name, kept for callers


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with storage.path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class _Progress:
    """A tqdm bar on stderr: records written this run, records/s, and shards done."""

    def __init__(self, total_groups: int, done_groups: int, enabled: bool):
        self.total, self.done = total_groups, done_groups
        self.bar = tqdm.tqdm(desc=self._desc(), unit=" records", disable=not enabled, mininterval=1.0)

    def _desc(self) -> str:
        return f"shards {self.done}/{self.total}"

    def tick(self, n: int = 1, group_done: bool = False) -> None:
        if group_done:
            self.done += 1
            self.bar.set_description_str(self._desc(), refresh=False)
        self.bar.update(n)
        if self.done >= self.total:
            self.bar.close()


def _plan(units, units_per_shard, name, kind, version, registry) -> dict:
    groups = max(1, -(-len(units) // units_per_shard))
    return {"format": FORMAT, "name": name, "kind": kind, "version": version, "units": list(units),
            "units_per_shard": units_per_shard, "num_groups": groups,
            "schema": schema.schema(registry, kind)}


def _check_plan(out: str, plan: dict) -> None:
    path = storage.path(out) / PROGRESS / "plan.json"
    if path.exists():
        old = storage.read_json(path)
        if old != json.loads(json.dumps(plan)):
            diff = sorted(k for k in set(old) | set(plan) if old.get(k) != json.loads(json.dumps(plan.get(k))))
            raise BuildError(
                f"{out} holds a build with a different plan (differs in: {', '.join(diff)}); "
                "resume it with the same arguments, or build into a fresh --out directory")
    else:
        write_json(path, plan)


def _marker(out: str, g: int):
    return storage.path(out) / PROGRESS / f"group-{g:05d}.json"


def _group_done(out: str, g: int) -> dict | None:
    """The group's marker if it and every shard it lists are in place."""
    try:
        marker = storage.read_json(_marker(out, g))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    for info in marker["shards"].values():
        path = storage.path(out) / info["file"]
        if not path.exists() or path.stat().length != info["bytes"]:
            return None
    return marker


def _build_group(out: str, g: int, units: Sequence, produce: Callable[[Any], Iterable[dict]],
                 plan: dict, registry: Registry, on_record: Callable[[], None] | None = None) -> dict:
    """Write group ``g``'s shards (one per split) and, last, its marker."""
    names = {s: schema.shard_name(plan["name"], s, g, plan["num_groups"]) for s in schema.SPLITS}
    root = storage.path(out)
    tmp = {s: root / PARTIAL / f"{n}.{os.getpid()}.{uuid.uuid4().hex[:8]}" for s, n in names.items()}
    writers = {s: tfrecord.TFRecordWriter(p) for s, p in tmp.items()}
    stats = schema.Statistics()
    value_names = list(schema.value_features(registry, plan["kind"]))
    try:
        for unit in units:
            for features in produce(unit):
                writers[features["split"]].write(tfrecord.encode_example(features))
                stats.add_features(features, value_names)
                if on_record:
                    on_record()
        for w in writers.values():
            w.close()
        info = {}
        for s in schema.SPLITS:
            info[s] = {"file": names[s], "records": writers[s].records, "bytes": tmp[s].stat().length,
                       "sha256": sha256_file(tmp[s])}
            tmp[s].replace(root / names[s])
    finally:
        for s, w in writers.items():
            w.close(sync=False)
            tmp[s].unlink(missing_ok=True)
    marker = {"group": g, "units": list(units), "shards": info, "statistics": stats.state()}
    write_json(_marker(out, g), marker)
    return marker


def _build_group_job(g: int, units: Sequence, *, out, produce, plan, registry) -> dict:
    return _build_group(out, g, units, produce, plan, registry)


def process_pool(workers: int) -> cf.ProcessPoolExecutor:
    """Worker processes spawned, not forked: the caller may hold JAX's threads, which fork can deadlock."""
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def build_shards(out: str, units: Sequence, produce: Callable[[Any], Iterable[dict]], *,
                 registry: Registry, kind: str, name: str, units_per_shard: int = 1,
                 version: str = "1.0.0", source: dict | None = None, workers: int = 1,
                 progress: bool = True, description: str = "", executor: Callable | None = None) -> dict:
    """Write every unit's records into a resumable shard set under ``out``; return the manifest.

    ``produce(unit)`` yields Example feature dicts (``schema.pixel_features`` /
    ``schema.latent_features``); ``units`` must be JSON-serialisable and in a
    fixed order. With ``workers > 1`` groups are built in parallel processes
    (``produce`` must then be picklable, e.g. a module-level function or a
    ``functools.partial`` of one). ``executor(build_group, jobs)`` runs the groups
    elsewhere instead (``datasets.tfds_builder.on_beam``: an Apache Beam pipeline):
    it calls ``build_group(g, units)`` once per job, in any process that reaches
    ``out``; the markers those calls leave are read back here.
    """
    if units_per_shard < 1:
        raise ValueError(f"units_per_shard must be >= 1, got {units_per_shard}")
    (storage.path(out) / PROGRESS).mkdir(parents=True, exist_ok=True)
    (storage.path(out) / PARTIAL).mkdir(parents=True, exist_ok=True)
    plan = _plan(units, units_per_shard, name, kind, version, registry)
    _check_plan(out, plan)
    groups = [list(units[g * units_per_shard:(g + 1) * units_per_shard]) for g in range(plan["num_groups"])]
    markers = {g: m for g in range(len(groups)) if (m := _group_done(out, g))}
    todo = [g for g in range(len(groups)) if g not in markers]
    if progress and markers:
        print(f"{out}: {len(markers)} of {len(groups)} shards already built, kept", file=sys.stderr)
    bar = _Progress(len(groups), len(markers), progress)
    if executor is not None and todo:
        executor(functools.partial(_build_group_job, out=out, produce=produce, plan=plan, registry=registry),
                 [(g, groups[g]) for g in todo])
        for g in todo:
            if (m := _group_done(out, g)) is None:
                raise BuildError(f"{out}: shard group {g} was not built by the executor")
            markers[g] = m
            bar.tick(sum(s["records"] for s in m["shards"].values()), group_done=True)
    elif workers <= 1 or len(todo) <= 1:
        for g in todo:
            markers[g] = _build_group(out, g, groups[g], produce, plan, registry, on_record=bar.tick)
            bar.tick(0, group_done=True)
    else:
        with process_pool(workers) as pool:
            futures = {pool.submit(_build_group, out, g, groups[g], produce, plan, registry): g for g in todo}
            for fut in cf.as_completed(futures):
                markers[futures[fut]] = m = fut.result()
                bar.tick(sum(s["records"] for s in m["shards"].values()), group_done=True)
    manifest = _finish(out, plan, [markers[g] for g in range(len(groups))], registry, source, description)
    partial = storage.path(out) / PARTIAL
    if partial.exists():
        partial.rmtree()  # leftovers of killed builds
    return manifest


def _manifest(out, *, name, kind, version, registry, source, files_by_split, stats) -> dict:
    """Write ``manifest.json`` from per-shard infos ({file, records, bytes, sha256}) and statistics."""
    splits = {s: {"records": sum(f["records"] for f in files), "bytes": sum(f["bytes"] for f in files),
                  "shards": files} for s, files in files_by_split.items()}
    manifest = {
        "format": FORMAT, "name": name, "kind": kind, "version": version, "source": source or {},
        "registry": {m.name: {"pixel_shape": list(m.pixel_shape), "latent_shape": list(m.latent_shape),
                              "scale_factor": m.scale_factor} for m in registry},
        "schema": schema.schema(registry, kind), "records": {s: v["records"] for s, v in splits.items()},
        "splits": splits, "statistics": stats.summary(),
    }
    write_json(storage.path(out) / MANIFEST, manifest)
    return manifest


def _finish(out, plan, markers, registry, source, description) -> dict:
    stats = schema.Statistics()
    for m in markers:
        stats.merge(schema.Statistics(m["statistics"]))
    files = {s: [m["shards"][s] for m in markers] for s in schema.SPLITS}
    manifest = _manifest(out, name=plan["name"], kind=plan["kind"], version=plan["version"], registry=registry,
                         source=source, files_by_split=files, stats=stats)
    nonempty = {s: {"shard_lengths": [f["records"] for f in v["shards"]], "bytes": v["bytes"]}
                for s, v in manifest["splits"].items() if v["records"]}
    write_json(storage.path(out) / "dataset_info.json",
                schema.tfds_dataset_info(plan["name"], plan["version"], nonempty, description))
    write_json(storage.path(out) / "features.json", schema.tfds_features_json(registry, plan["kind"]))
    return manifest


def manifest_from_directory(directory: str, registry: Registry, kind: str, *, name: str, version: str,
                            source: dict | None = None) -> dict:
    """Write the manifest of shards made elsewhere (e.g. by TFDS) by reading every record once."""
    value_names = list(schema.value_features(registry, kind))
    stats, files = schema.Statistics(), {}
    for split in schema.SPLITS:
        prefix = f"{name}-{split}.tfrecord-"
        for fname in sorted(f.name for f in storage.path(directory).iterdir() if f.name.startswith(prefix)):
            path = storage.path(directory) / fname
            n = 0
            for data in tfrecord.read_records(path):
                stats.add_features(tfrecord.decode_example(data), value_names)
                n += 1
            files.setdefault(split, []).append({"file": fname, "records": n, "bytes": path.stat().length,
                                                "sha256": sha256_file(path)})
    return _manifest(directory, name=name, kind=kind, version=version, registry=registry, source=source,
                     files_by_split=files, stats=stats)


# ---------------------------------------------------------------------------
# Reading a built set.
# ---------------------------------------------------------------------------


def load_manifest(directory: str) -> dict:
    path = storage.path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {directory} is not a finished shard set "
                                "(build it with `python -m copgen_jax.datasets.build`, which resumes if interrupted)")
    return storage.read_json(path)


def shard_files(directory: str, split: str = "train") -> list[str]:
    """Paths of the non-empty shards of ``split``, from the manifest."""
    manifest = load_manifest(directory)
    if split not in manifest["splits"]:
        raise KeyError(f"{directory}: no split {split!r}; it has {sorted(manifest['splits'])}")
    return [os.fspath(storage.path(directory) / s["file"]) for s in manifest["splits"][split]["shards"] if s["records"]]


def resolve_shards(spec: str, split: str = "train") -> list[str]:
    """Shard files named by a config: a shard set directory (its manifest's ``split``) or a glob.

    Either may be a URI (``gs://bucket/latents`` or ``gs://bucket/latents/*-train.tfrecord-*``).
    """
    if not spec:
        raise ValueError("data.shards is empty: give a shard set directory or a glob of shard files")
    files = shard_files(spec, split) if storage.path(spec).is_dir() else storage.glob(spec)
    if not files:
        raise FileNotFoundError(f"data.shards={spec!r}: no {split} shards (neither a shard set directory "
                                "nor a glob matching files)")
    return files


def verify(directory: str) -> dict:
    """Re-hash every shard against the manifest; raise naming the first bad file."""
    manifest = load_manifest(directory)
    for split in manifest["splits"].values():
        for s in split["shards"]:
            path = storage.path(directory) / s["file"]
            if not path.exists():
                raise BuildError(f"{path} is listed in the manifest but missing")
            digest = sha256_file(path)
            if digest != s["sha256"]:
                raise BuildError(f"{path}: sha256 {digest} != manifest's {s['sha256']}: the file changed "
                                 "after it was built; delete it and its .progress marker, then rebuild")
    return manifest
