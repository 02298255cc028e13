"""The paper's stochastic benchmark on its published data: DEM + land cover -> S2 L2A, Table 1.

    python -m copgen_jax.evaluate --benchmark=copgen --model runs/copgen_base [--cells N]

Data, through ``huggingface_hub`` (``copgen_jax.hub``; cached, resumable, offline once cached):

* ``Major-TOM/COP-GEN-Benchmark``: ``metadata/benchmark_grid.json`` ({cell: {ul_x, ul_y, crs}},
  the upper-left corner of the cell on the grid the model was trained on) and
  ``real/data/*.parquet``, one row per real acquisition: ``grid_cell``, ``sample_id``, ``date``
  and ``B01`` ... ``B12``, ``B8A`` as single-band GeoTIFF bytes (1056 x 1056 px at 10 m, DN).
  Shards are fetched one at a time, in order, until the cells asked for are read, so
  ``--cells 5`` downloads one shard, not the whole set.
* ``mespinosami/copgen-test-dataset`` (or ``--conditions-root``, a local Major TOM folder): the
  same cells' ``Core-DEM`` and ``Core-LULC``, which condition the generation.

Per cell, as the release's ``benchmark/stochastic`` does it:

* **Window.** 192 x 192 px at 10 m whose upper-left corner is 4380 m east and south of the
  cell's (the centre crop of the 1068-px training tile), in the grid's CRS; a real tile in
  another CRS is cut at the window's bounds transformed into it. Pixel offsets are rounded and
  whatever falls outside the tile is zero.
* **Real set.** Every acquisition whose B02 window is at least 95 % non-zero (16 dates at most
  are published); a cell with fewer than 2 is skipped, as the paper's 6 of 495 are.
* **Generated set.** ``--samples`` (16) samples of the run's S2 L2A modalities from the
  window's DEM and land cover (read onto each modality's grid with rasterio, reprojected when
  the file's grid differs), sampler ``--sampler`` with ``--steps`` evaluations, seed
  ``--seed`` + the cell's index in the grid's sorted cells: a subset, a rerun and a resumed
  run draw the same samples for a cell.
* **Metrics.** ``benchmarks.set_metrics`` on the per-image 12-band mean spectra (zeros
  excluded, reflectance = DN / 1e4; the bands the run generates): recall, precision, 1-NN
  accuracy, MMD, mean Wasserstein, range coverage, intra-set distances; then the calibration
  of the samples against each real date, per pixel at each modality's native resolution (the
  real bands averaged over the native pixel): 5-95 % interval coverage and CRPS; and the
  per-pixel std of both sets.

Each cell's result is written to ``OUT/parts/<model>/<cell>.json`` as it finishes (keyed by the
settings and data commits), so an interrupted run resumes at the next cell. The summary (mean
± std over cells) is printed beside the paper's Table 1 and written to ``OUT/results.json`` and
``OUT/results.md``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import Callable, Mapping

import numpy as np

from copgen_jax import hub, storage
from copgen_jax.evaluate import metrics
from copgen_jax.evaluate.benchmarks import LULC, DEM, S2L2A, VALID_BAND, Settings, set_metrics, summarise
from copgen_jax.evaluate.data import Group, Progress, eval_units, resolve
from copgen_jax.evaluate.run import cached, json_ready
from copgen_jax.modalities import IMAGE, Registry

WINDOW_PX, PIXEL_M = 192, 10.0
CENTRE_OFFSET_M = (1068 - 192) // 2 * PIXEL_M  # the centre crop of the training grid's 1068-px tile
MIN_REAL = 2  # a cell needs two valid real dates to have a set
REAL_COLUMNS = ("grid_cell", "sample_id", "date")
GIVEN = (Group(DEM), Group(LULC))
TARGET = (Group(S2L2A, IMAGE),)
CONDITION_PATTERNS = ("Core-DEM/*", "Core-LULC/*", "*.zip")

# Table 1 of the paper (12-band spectra, mean over 489 cells); SPEC section 6.
PAPER_TABLE1 = {
    "COP-GEN (paper)": {"recall": 0.900, "precision": 0.289, "nn_accuracy": 0.911, "range_coverage": 0.629,
                        "intra_generated": 0.455, "intra_real": 0.214, "mmd": 0.589, "wasserstein": 0.143},
    "TerraMind (paper)": {"recall": 0.028, "precision": 0.483, "nn_accuracy": 0.985, "range_coverage": 0.180,
                          "intra_generated": 0.050, "intra_real": 0.214, "mmd": 1.149, "wasserstein": 0.117},
}
COLUMNS = (("recall", "recall"), ("precision", "precision"), ("nn_accuracy", "1-NN"),
           ("range_coverage", "range coverage"), ("intra_generated", "intra-set"), ("intra_real", "intra-set real"),
           ("mmd", "MMD"), ("wasserstein", "Wasserstein"), ("interval_coverage", "5-95% coverage"),
           ("crps", "CRPS"))


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where the benchmark's data comes from."""

    benchmark_revision: str = "main"
    conditions_revision: str = "main"
    conditions_root: str | None = None  # a local Major TOM folder with the cells' Core-DEM / Core-LULC
    hub_cache: str | None = None


# -- the evaluation window ------------------------------------------------------------------
def window_grid(cell: str, grid: Mapping):
    """The cell's 192 x 192 evaluation window at 10 m, in the benchmark grid's CRS."""
    from rasterio.crs import CRS
    from copgen_jax.datasets.footprints import Grid
    if cell not in grid:
        raise KeyError(f"cell {cell} is not in {hub.BENCHMARK_GRID}")
    info = grid[cell]
    return Grid(CRS.from_user_input(info["crs"]), info["ul_x"] + CENTRE_OFFSET_M, info["ul_y"] - CENTRE_OFFSET_M,
                PIXEL_M, WINDOW_PX, WINDOW_PX)


def crop_window(src, window) -> np.ndarray:
    """The window's pixels (bands, 192, 192) from an open tile, zero where the tile ends."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window
    left, bottom, right, top = window.bounds
    if src.crs != window.crs:
        left, bottom, right, top = transform_bounds(window.crs, src.crs, left, bottom, right, top)
    col, row = round((left - src.transform.c) / src.transform.a), round((src.transform.f - top) / -src.transform.e)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + WINDOW_PX, src.width), min(row + WINDOW_PX, src.height)
    out = np.zeros((src.count, WINDOW_PX, WINDOW_PX), src.dtypes[0])
    if c1 > c0 and r1 > r0:
        out[:, r0 - row:r1 - row, c0 - col:c1 - col] = src.read(window=Window(c0, r0, c1 - c0, r1 - r0))
    return out


def _decode_band(blob: bytes, window, where: str) -> np.ndarray:
    import rasterio
    try:
        with rasterio.open(io.BytesIO(blob)) as src:
            return crop_window(src, window)[0]
    except rasterio.errors.RasterioIOError as e:
        raise ValueError(f"{where}: the band is not a readable GeoTIFF ({e}); the shard is damaged: delete it "
                         "from the Hugging Face cache and run again to download it anew") from e


# -- the published real acquisitions --------------------------------------------------------
class RealSets:
    """The benchmark's real acquisitions per cell, read shard by shard as cells are asked for."""

    def __init__(self, listing: hub.Listing):
        self.listing = listing
        self.grid = json.loads(listing.fetch(hub.BENCHMARK_GRID).read_text())
        self.shards = listing.matching(hub.BENCHMARK_REAL)
        if not self.shards:
            raise hub.HubError(f"{listing.repo}@{listing.commit[:12]} has no {hub.BENCHMARK_REAL}: the download is "
                               "incomplete (run again online) or the revision predates the benchmark")
        self._rows: dict[str, list[tuple[str, int]]] = {}  # cell -> [(shard, row)]
        self._read = 0  # shards indexed so far

    def _index_next(self) -> bool:
        import pyarrow.parquet as pq
        if self._read == len(self.shards):
            return False
        shard = self.shards[self._read]
        for i, cell in enumerate(pq.read_table(self.listing.fetch(shard), columns=["grid_cell"])
                                 .column("grid_cell").to_pylist()):
            self._rows.setdefault(cell, []).append((shard, i))
        self._read += 1
        return True

    def cells(self, limit: int = 0) -> list[str]:
        """Cells in the order the shards hold them; with ``limit``, only enough shards for that many.

        A cell is complete once a later cell has appeared after it (the shards are written cell
        by cell), so ``limit`` cells need the shards up to the first row of cell ``limit + 1``.
        """
        while (not limit or len(self._rows) <= limit) and self._index_next():
            pass
        found = [c for c in self._rows if c in self.grid]
        return found[:limit] if limit else found

    def real(self, cell: str, bands: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
        """The cell's valid real windows (N, len(bands), 192, 192) in DN and their dates."""
        import pyarrow.parquet as pq
        window = window_grid(cell, self.grid)
        images, dates = [], []
        by_shard: dict[str, list[int]] = {}
        for shard, row in self._rows.get(cell, []):
            by_shard.setdefault(shard, []).append(row)
        for shard, rows in by_shard.items():
            table = pq.read_table(self.listing.fetch(shard), columns=list(REAL_COLUMNS + bands)).take(rows)
            for record in table.to_pylist():
                where = f"{shard}, cell {cell}, {record['sample_id']}"
                images.append(np.stack([_decode_band(record[b], window, f"{where}, band {b}") for b in bands]))
                dates.append(str(record["date"]))
        if not images:
            return np.zeros((0, len(bands), WINDOW_PX, WINDOW_PX), np.float32), []
        images = np.stack(images).astype(np.float32)
        keep = metrics.valid_real_image(images, bands.index(VALID_BAND) if VALID_BAND in bands else 0)
        return images[keep], [d for d, k in zip(dates, keep) if k]


# -- conditions -----------------------------------------------------------------------------
def condition_root(sources: Sources, out) -> str:
    """The Major TOM folder holding the cells' Core-DEM and Core-LULC (downloaded when not given)."""
    from copgen_jax.datasets.majortom import find_root
    if sources.conditions_root:
        return os.fspath(find_root(sources.conditions_root))
    snap = hub.snapshot(hub.CONDITIONS_REPO, sources.conditions_revision, repo_type="dataset",
                        allow_patterns=CONDITION_PATTERNS, cache_dir=sources.hub_cache)
    return os.fspath(find_root(hub.unzip_once(snap, storage.path(out) / "conditions")))


def read_conditions(root, registry: Registry, names, cell: str, window) -> dict[str, np.ndarray]:
    """The window's given modalities {name: (1, C, H, W)} in physical units, from Major TOM files."""
    from copgen_jax.datasets import majortom
    from copgen_jax.datasets.raster import check_codes, read_to_grid
    out = {}
    for name in names:
        m = registry[name]
        found = majortom.find_products(root, m.product, cell)
        if not found:
            raise FileNotFoundError(f"cell {cell}: no {m.product} under {root} (expected "
                                    f"{majortom.product_dir(root, m.product, cell, '<product_id>')})")
        paths = [found[-1].band_path(b) for b in m.bands]  # the latest product (land cover: the latest year)
        layer = np.stack([read_to_grid(p, window.at(m.gsd), m.kind != IMAGE) for p in paths])
        if not np.isfinite(layer).all():
            raise ValueError(f"cell {cell}: {paths[0]} has nodata inside the evaluation window")
        if m.kind != IMAGE:
            check_codes(m, layer, paths)
        out[name] = layer[None]
    return out


# -- one cell -------------------------------------------------------------------------------
def native(real: np.ndarray, gsd: float) -> np.ndarray:
    """10 m windows (..., H, W) averaged onto a coarser modality's pixels."""
    f = gsd / PIXEL_M
    if abs(f - round(f)) > 1e-6:
        raise ValueError(f"a {gsd:g} m modality is not a whole number of 10 m pixels; the benchmark compares "
                         "at native resolution by averaging 10 m pixels")
    f = int(round(f))
    h, w = real.shape[-2] // f, real.shape[-1] // f
    return real[..., :h * f, :w * f].reshape(*real.shape[:-2], h, f, w, f).mean((-3, -1))


def cell_metrics(registry: Registry, target, real: Mapping[str, np.ndarray], fake: Mapping[str, np.ndarray],
                 k: int) -> dict:
    """One cell: the real set {name: (N, C, 192, 192)} DN against the samples {name: (K, C, h, w)}."""
    spectra = lambda images: np.concatenate(  # noqa: E731
        [metrics.spectra_embedding(eval_units(registry[n], images[n])) for n in target], -1)
    row = dict(set_metrics(spectra(real), spectra(fake), k))
    calibration = []
    for n in target:
        m = registry[n]
        truth, samples = eval_units(m, native(real[n], m.gsd)), eval_units(m, fake[n])
        valid = np.broadcast_to((truth != 0).all(-3, keepdims=True), truth.shape)  # nodata in any band
        calibration.append({
            "interval_coverage": np.mean([metrics.interval_coverage(t, samples, mask=v)
                                          for t, v in zip(truth, valid)]),
            "crps": np.mean([metrics.crps(t, samples, mask=v) for t, v in zip(truth, valid)]),
            "pixel_std/real": truth.std(0).mean(), "pixel_std/generated": samples.std(0).mean()})
    row.update({key: float(np.mean([c[key] for c in calibration])) for key in calibration[0]})
    return row


def _cell(model, registry, given, target, real_sets, root, cell, index, s: Settings) -> dict:
    bands = tuple(dict.fromkeys(b for n in target for b in registry[n].bands))
    images, dates = real_sets.real(cell, bands)
    if len(images) < MIN_REAL:
        return {"cell": cell, "skipped": f"{len(images)} valid real acquisition(s); {MIN_REAL} needed"}
    window = window_grid(cell, real_sets.grid)
    conditions = read_conditions(root, registry, given, cell, window)
    fake = model.generate(list(target), conditions, n_samples=s.samples, seed=s.seed + index, steps=s.steps,
                          sampler=s.sampler)
    real = {n: images[:, [bands.index(b) for b in registry[n].bands]] for n in target}
    row = cell_metrics(registry, target, real, {n: np.asarray(fake[n][0]) for n in target}, s.k)
    return {"cell": cell, "real": len(images), "dates": dates, **row}


# -- the whole benchmark --------------------------------------------------------------------
def run(models: Mapping[str, Callable], registry: Registry, out, settings: Settings, sources: Sources = Sources(),
        *, steps: Mapping[str, int] | None = None, model_runs: Mapping[str, str] | None = None) -> dict:
    """The benchmark for each model ({label: () -> model with ``CopGen.generate``}); -> results.

    Models are loaded only when a cell needs them (a finished rerun loads nothing).
    """
    given, missing = resolve(registry, GIVEN)
    target, missing_t = resolve(registry, TARGET)
    if missing or missing_t:
        raise ValueError(f"the benchmark generates S2 L2A from DEM + land cover; the run has no modality for "
                         f"{', '.join(missing + missing_t)} ({', '.join(registry.names)})")
    real_sets = RealSets(hub.listing(hub.BENCHMARK_REPO, sources.benchmark_revision, repo_type="dataset",
                                     cache_dir=sources.hub_cache))
    cells = real_sets.cells(settings.cells)
    index = {c: i for i, c in enumerate(sorted(real_sets.grid))}
    root = condition_root(sources, out)
    data = {"benchmark": real_sets.listing.record(),
            "conditions": sources.conditions_root or hub.CONDITIONS_REPO}
    results = {"benchmark": "copgen", "data": data, "given": list(given), "generated": list(target),
               "settings": dataclasses.asdict(settings), "cells": len(cells), "models": {}, "per_cell": {},
               "paper": PAPER_TABLE1}
    for label, load in models.items():
        per_cell = {k: v for k, v in results["settings"].items() if k not in ("cells", "chunk")}
        key = {"settings": per_cell, "data": data, "step": (steps or {}).get(label),
               "registry": list(registry.names)}
        progress, rows = Progress(f"copgen benchmark [{label}] cells", len(cells)), []
        for done, cell in enumerate(cells, 1):
            rows.append(cached(storage.path(out) / "parts" / label / f"{cell}.json", key,
                                lambda: _cell(load(), registry, given, target, real_sets, root, cell,
                                              index[cell], settings)))
            progress(done)
        kept = [r for r in rows if "skipped" not in r]
        results["models"][label] = {"run": (model_runs or {}).get(label), "step": key["step"], "cells": len(kept),
                                    "skipped": len(rows) - len(kept),
                                    **summarise([{k: v for k, v in r.items() if k not in ("cell", "dates")}
                                                 for r in kept])}
        results["per_cell"][label] = rows
    storage.path(out).mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.path(out) / "results.json", json.dumps(json_ready(results), indent=1))
    storage.write_text(storage.path(out) / "results.md", table(results))
    return results


def _fmt(stat) -> str:
    if isinstance(stat, dict):
        mean, std = stat.get("mean"), stat.get("std")
        if mean is None or not math.isfinite(mean):
            return "–"
        return f"{mean:.3f} ± {std:.3f}"
    return "–" if stat is None else f"{stat:.3f}"


def table(results: dict) -> str:
    """Markdown: each model's mean ± std over cells beside the paper's Table 1."""
    head = "| model | cells | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for label, res in results["models"].items():
        lines.append(f"| {label} | {res['cells']} | " + " | ".join(_fmt(res.get(k)) for k, _ in COLUMNS) + " |")
    for label, paper in PAPER_TABLE1.items():
        lines.append(f"| {label} | 489 | " + " | ".join(_fmt(paper.get(k)) for k, _ in COLUMNS) + " |")
    s = results["settings"]
    return (f"COP-GEN stochastic benchmark ({hub.BENCHMARK_REPO}@{results['data']['benchmark']['commit'][:12]}): "
            f"{' + '.join(results['given'])} -> {' + '.join(results['generated'])}, {s['samples']} samples per cell, "
            f"{s['sampler']} {s['steps']} steps, seed {s['seed']} + cell index\n\n" + "\n".join(lines) + "\n")
