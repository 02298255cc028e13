"""Input-pipeline throughput: records/s of the Grain pipeline over pixel and latent schema.

    python benchmarks/input_pipeline.py --out=/tmp/input_pipeline.json [--workers=0,1,2]

Writes shards of the official registry's shapes (random values: throughput
does not depend on them) into --workdir, then times each pipeline for
--seconds after one warm-up batch, with 0 (a prefetch thread), 1, 2, ...
worker processes. Prints a table and writes it as JSON. Goal: >= 2,000 latent
records/s per host on 2 cores (a v4-32 host needs ~1,000/s at global batch 4096
and one step per second).
"""
from __future__ import annotations

import functools
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from copgen_jax.data import input_pipeline  # noqa: E402
from copgen_jax.data import shards
from copgen_jax.data import schema
from copgen_jax.defaults import default_config  # noqa: E402
from copgen_jax.modalities import build_registry  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "input_pipeline.json", "where the JSON table goes")
flags.DEFINE_string("workdir", "", "where shards are written (default: a temporary directory)")
flags.DEFINE_string("workers", "0,1,2", "worker-process counts to time")
flags.DEFINE_integer("latent_records", 2048, "latent records to write")
flags.DEFINE_integer("pixel_records", 96, "pixel records to write")
flags.DEFINE_integer("latent_batch", 256, "per-process batch for latents")
flags.DEFINE_integer("pixel_batch", 8, "per-process batch for pixels")
flags.DEFINE_integer("shards", 8, "shards per kind")
flags.DEFINE_float("seconds", 10.0, "timed seconds per configuration")


def _meta(unit, i):
    return {"key": f"{unit}/0/{i}", "cell_id": str(unit), "observation": 0, "row": i // 6, "col": i % 6,
            "split": "train", "crs": "EPSG:32631", "transform": (10.0, 0.0, 5e5, 0.0, -10.0, 5e6),
            "date": "2021-06-15"}


def latent_unit(unit, *, registry, per_unit):
    rng = np.random.default_rng(unit)
    for i in range(per_unit):
        present = {m.name: bool(rng.random() > 0.1) for m in registry}
        mean = {m.name: rng.standard_normal(m.latent_shape, np.float32) for m in registry.spatial}
        logvar = {m.name: rng.uniform(-8, -2, m.latent_shape).astype(np.float32) for m in registry.spatial}
        scalars = {m.name: rng.uniform(-1, 1, 3).astype(np.float32) for m in registry if m.is_scalar}
        yield schema.latent_features(_meta(unit, i), registry, present, mean, logvar, scalars)


def pixel_unit(unit, *, registry, per_unit):
    rng = np.random.default_rng(unit)
    for i in range(per_unit):
        out = schema.metadata_features(_meta(unit, i))
        for m in registry:
            out[f"{m.name}/present"] = np.array([1], np.int64)
            out[m.name] = rng.uniform(-1, 1, int(np.prod(m.pixel_shape))).astype(np.float32)
        yield out


def write(workdir, kind, produce, records, registry):
    out = os.path.join(workdir, kind)
    per_unit = records // FLAGS.shards
    produce = functools.partial(produce, registry=registry, per_unit=per_unit)
    shards.build_shards(out, list(range(FLAGS.shards)), produce, registry=registry, kind=kind,
                              name=f"bench_{kind}", progress=False)
    files = shards.shard_files(out, "train")
    return files, sum(os.path.getsize(f) for f in files) / (per_unit * FLAGS.shards)


def time_pipeline(make, cfg, registry, files, batch, workers, window):
    cfg.data.num_workers = workers
    it = make(cfg, registry, files, process_index=0, process_count=1, seed=0, batch_size=batch, shuffle_buffer=window)
    next(it)  # start-up (worker processes, first window) is not throughput
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < FLAGS.seconds:
        next(it)
        n += batch
    elapsed = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    return n / elapsed


def main(_):
    registry = build_registry()
    cfg = default_config()
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="copgen_input_bench_")
    rows = []
    device_moments = functools.partial(input_pipeline.make_latent_iterator, sample_on="device")
    for kind, produce, records, batch, window in (
            (schema.LATENTS, latent_unit, FLAGS.latent_records, FLAGS.latent_batch, 256),
            (schema.PIXELS, pixel_unit, FLAGS.pixel_records, FLAGS.pixel_batch, 16)):
        t = time.perf_counter()
        files, record_bytes = write(workdir, kind, produce, records, registry)
        print(f"wrote {records} {kind} records ({record_bytes / 1e6:.2f} MB each) in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        modes = ([("z on host", input_pipeline.make_latent_iterator), ("moments (z on device)", device_moments)]
                 if kind == schema.LATENTS else [("pixels", input_pipeline.make_pixel_iterator)])
        for mode, make in modes:
            for workers in (int(w) for w in FLAGS.workers.split(",")):
                rate = time_pipeline(make, cfg, registry, files, batch, workers, window)
                rows.append({"shards": kind, "output": mode, "workers": workers, "batch": batch, "window": window,
                             "records_per_s": round(rate, 1), "MB_per_s": round(rate * record_bytes / 1e6, 1),
                             "record_MB": round(record_bytes / 1e6, 3)})
                print(f"{kind:8s} {mode:22s} workers={workers} batch={batch:4d}: {rate:9.1f} records/s",
                      file=sys.stderr)
    table = ["| shards | output | workers | batch | records/s | MB/s read | MB/record |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['shards']} | {r['output']} | {r['workers']} | {r['batch']} | {r['records_per_s']:.0f} "
              f"| {r['MB_per_s']:.0f} | {r['record_MB']:.2f} |" for r in rows]
    print("\n".join(table))
    result = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "seconds_per_config": FLAGS.seconds, "rows": rows}
    with open(FLAGS.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
