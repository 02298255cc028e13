"""The demo's report: any-to-any samples on held-out footprints, with metrics and maps.

For every task of ``cfg.pipeline.tasks`` ("given+given->generated"), the first
``cfg.pipeline.footprints`` held-out footprint locations that have all its
modalities are conditioned on their real given modalities; ``n_samples`` are
generated and compared with the real generated modalities:

  images       MAE and RMSE of the sample mean and best-of-N MAE, in the units the
               registry returns (S2 DN, S1 dB, DEM metres); mean per-pixel std
               (the spread); interval coverage (5-95%) and CRPS (calibration)
  class maps   accuracy and mIoU of the per-pixel mode; disagreement between samples
  scalars      great-circle error (lat/lon) or day error (date) of the mean

Written to ``<workdir>/report/``: ``metrics.json``, ``report.md`` and, per task, one
PNG sheet per footprint (``sheet_<i>.png``) and the GeoTIFFs of the first footprint
(every sample and statistic, georeferenced).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from copgen_jax import storage
from copgen_jax.inference import geo
from copgen_jax.evaluate import metrics
from copgen_jax.data.footprints import by_location, read_footprints
from copgen_jax.codecs import LatLon, LogPower
from copgen_jax.modalities import CATEGORICAL, Modality, Registry


def parse_task(task: str) -> tuple[list[str], list[str]]:
    given, _, generated = task.partition("->")
    if not generated:
        raise ValueError(f"task {task!r}: write it as 'given+given->generated'")
    return [n for n in given.split("+") if n], [n for n in generated.split("+") if n]


def pick_footprints(groups: dict, names: list[str], count: int) -> list[dict]:
    """One complete observation from each of ``count`` locations that have ``names``.

    Locations of different cells come first (round robin over cells), so the
    report spans as many held-out landscapes as it can.
    """
    per_cell: dict[str, list[dict]] = {}
    for (cell, _, _), records in groups.items():
        complete = [r for r in records if all(n in r["pixels"] for n in names)]
        if complete:
            per_cell.setdefault(cell, []).append(complete[0])
    chosen, depth = [], 0
    while len(chosen) < count and any(len(v) > depth for v in per_cell.values()):
        chosen += [v[depth] for v in per_cell.values() if len(v) > depth][:count - len(chosen)]
        depth += 1
    return chosen


def _to_report_units(m: Modality, x):
    """S1 compared in dB clipped to [-50, 10] (as the paper); the rest as the registry returns."""
    return np.clip(10 * np.log10(np.maximum(x, 1e-10)), -50, 10) if isinstance(m.codec, LogPower) else x


def modality_metrics(m: Modality, truth: np.ndarray, samples: np.ndarray) -> dict:
    """truth (B, *shape), samples (B, N, *shape), physical units."""
    if m.kind == CATEGORICAL:
        idx_truth = m.codec.index_of(truth[:, 0])
        idx_samples = m.codec.index_of(samples[:, :, 0])
        votes = np.stack([(idx_samples == k).sum(1) for k in range(m.num_classes)], 1)
        mode = votes.argmax(1)
        return {"accuracy": float(metrics.class_accuracy(mode, idx_truth, num_classes=m.num_classes)),
                "miou": float(metrics.miou(mode, idx_truth, num_classes=m.num_classes)),
                "sample_disagreement": float(1 - votes.max(1).mean() / samples.shape[1])}
    if m.is_scalar:
        if isinstance(m.codec, LatLon):
            return {"km_error": float(np.mean(metrics.haversine_km(samples.mean(1), truth)))}
        return {"day_error": float(np.mean(metrics.day_error(samples[:, 0], truth)))}
    truth, samples = _to_report_units(m, truth), _to_report_units(m, samples)
    mean = samples.mean(1)
    per_sample_mae = np.abs(samples - truth[:, None]).mean(axis=tuple(range(2, samples.ndim)))
    return {"mae": float(metrics.mae(mean, truth, per_band=False)),
            "rmse": float(metrics.rmse(mean, truth, per_band=False)),
            "best_of_n_mae": float(per_sample_mae.min(1).mean()),
            "spread": float(samples.std(1).mean()),
            "interval_coverage_5_95": float(metrics.interval_coverage(truth, np.moveaxis(samples, 1, 0))),
            "crps": float(metrics.crps(truth, np.moveaxis(samples, 1, 0)))}


def run_task(copgen, registry: Registry, task: str, groups: dict, p, out_dir: str | None) -> dict:
    """Samples ``task`` on held-out footprints; metrics, and with ``out_dir`` its GeoTIFFs and sheets."""
    given, generated = parse_task(task)
    chosen = pick_footprints(groups, given + generated, p.footprints)
    if not chosen:
        return {"skipped": f"no held-out footprint has {', '.join(given + generated)}"}
    conditions = {n: np.stack([r["pixels"][n] for r in chosen]) for n in given}
    gen = copgen.generate(generated, conditions, n_samples=p.n_samples, seed=p.seed,
                          steps=p.sample_steps, sampler=p.sampler, guidance=p.guidance, stats=True)
    result = {"given": given, "generated": generated, "footprints": [r["key"] for r in chosen],
              "metrics": {n: modality_metrics(registry[n], np.stack([r["pixels"][n] for r in chosen]), gen[n])
                          for n in generated}}
    if out_dir is None:
        return result
    first = chosen[0]
    footprint = geo.Footprint.from_grid(first["crs"], first["transform"], _base_pixels(registry))
    geo.write_generation(storage.path(out_dir) / "geotiff", gen, footprint, item=0)
    for i, record in enumerate(chosen):
        _sheet(gen, record, i, storage.path(out_dir) / f"sheet_{i}.png")
    return result


def _base_pixels(registry: Registry) -> int:
    """Pixels per side of the finest grid: the record transforms describe that grid."""
    finest = min(registry.spatial, key=lambda m: m.gsd)
    return finest.size


def _sheet(gen, record, item, path):
    try:
        from copgen_jax.inference import visualize
    except ImportError:
        return
    visualize.save_sheet(path, gen, item=item, truth={n: record["pixels"][n] for n in gen.samples})


def write_report(cfg, workdir, out) -> dict:
    from copgen_jax.inference.copgen import CopGen
    p = cfg.pipeline
    copgen = CopGen.load(workdir)
    registry = copgen.registry
    groups = by_location(read_footprints(os.fspath(storage.path(workdir) / "data" / "pixels"), registry, "test"))
    if not groups:
        raise RuntimeError(f"{workdir}/data/pixels has no test split to report on")
    results = {}
    for i, task in enumerate(p.tasks):
        logging.info("report task %d/%d: %s", i + 1, len(p.tasks), task)
        task_dir = storage.path(out) / (f"task_{i}_" + task.replace("->", "_to_").replace("+", "_"))
        task_dir.mkdir(parents=True, exist_ok=True)
        results[task] = run_task(copgen, registry, task, groups, p, task_dir)
    summary = {"tasks": results, "n_samples": p.n_samples, "steps": p.sample_steps, "sampler": p.sampler,
               "test_locations": len(groups)}
    storage.path(out).mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.path(out) / "report.md", markdown(summary))
    # last: its presence marks the stage done
    storage.write_text(storage.path(out) / "metrics.json", json.dumps(summary, indent=2))
    return summary


def markdown(summary: dict) -> str:
    lines = [f"# Demo report: {summary['n_samples']} samples per footprint, {summary['sampler']} "
             f"{summary['steps']} steps, {summary['test_locations']} held-out locations", ""]
    for task, res in summary["tasks"].items():
        lines.append(f"## {task}")
        if "skipped" in res:
            lines += [f"skipped: {res['skipped']}", ""]
            continue
        for name, values in res["metrics"].items():
            lines.append(f"- **{name}**: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        lines.append("")
    return "\n".join(lines)
