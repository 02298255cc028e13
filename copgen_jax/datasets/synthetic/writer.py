"""Write the synthetic world in the Major TOM GeoTIFF layout (see ``datasets.majortom``).

Static products (DEM, land cover) are written once per cell, the others once
per observation, each in its own ``<product_id>`` folder whose name carries the
sensing time. Files appear atomically (written under a hidden name, then
renamed), and an observation whose files all exist is skipped, so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import rasterio

from copgen_jax.codecs import Elevation, LogPower, OneHot, Reflectance
from copgen_jax.modalities import Registry, build_registry
from copgen_jax.datasets.footprints import spatial
from copgen_jax.datasets.majortom import SINGLE_FILE_PRODUCTS, product_dir
from copgen_jax.datasets.synthetic.geometry import sample_cells
from copgen_jax.datasets.synthetic.world import SENSORS, make_cell, product_ids

log = logging.getLogger(__name__)

# On-disk sample type per codec, as Major TOM stores them.
DTYPES = {Reflectance: "uint16", OneHot: "uint8", LogPower: "float32", Elevation: "float32"}


def _band_files(registry: Registry) -> dict:
    """product -> [(band, dtype)] for every band the registry reads."""
    out: dict = {}
    for m in spatial(registry):
        out.setdefault(m.product, []).extend((b, DTYPES[type(m.codec)]) for b in m.bands)
    return out


def band_file(root, product: str, cell_id: str, product_id: str, band: str) -> Path:
    base = product_dir(root, product, cell_id, product_id)
    return base if product in SINGLE_FILE_PRODUCTS else base / f"{band}.tif"


def write_geotiff(path: Path, array: np.ndarray, grid, dtype: str, compress: str | None = "deflate") -> None:
    """One-band GeoTIFF, written under a hidden name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    profile = dict(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1, dtype=dtype,
                   crs=grid.crs, transform=grid.transform)
    if compress:
        profile.update(compress=compress, predictor=3 if dtype.startswith("float") else 2)
    if np.dtype(dtype).kind in "ui":
        array = np.clip(np.round(array), np.iinfo(dtype).min, np.iinfo(dtype).max)
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(array.astype(dtype), 1)
    os.replace(partial, path)


def write_majortom(root, cells: int = 1, observations: int = 1, seed: int = 0, footprints_per_side: int = 6,
                   registry: Registry | None = None, cell_ids=None, compress: str | None = "deflate") -> list[str]:
    """Write ``cells`` x ``observations`` of the synthetic world under ``root``; returns the cell ids.

    ``registry`` chooses which modalities' files are written (always at their
    official native resolution); default: all of them. ``cell_ids`` overrides
    the seeded choice of places.
    """
    cell_ids = list(cell_ids) if cell_ids is not None else sample_cells(seed, cells)
    start = time.time()
    for i, cell_id in enumerate(cell_ids):
        write_cell(root, cell_id, observations, seed, footprints_per_side, registry, compress)
        log.info("synthetic world: cell %d/%d (%s) written, %.1f s", i + 1, len(cell_ids), cell_id,
                 time.time() - start)
    return cell_ids


def write_cell(root, cell_id: str, observations: int = 1, seed: int = 0, footprints_per_side: int = 6,
               registry: Registry | None = None, compress: str | None = "deflate") -> None:
    """Write the files of one cell's ``observations`` that are not there yet (a rerun resumes)."""
    files = _band_files(build_registry(None if registry is None else [m.name for m in registry]))
    for k in range(observations):
        ids = product_ids(seed, cell_id, k, footprints_per_side)
        todo = [p for p in files if not (SENSORS[p].static and k > 0)
                and not all(band_file(root, p, cell_id, ids[p], b).exists() for b, _ in files[p])]
        if not todo:
            continue
        cell = make_cell(seed, cell_id, k, footprints_per_side, products=todo)
        for product in todo:
            for band, dtype in files[product]:
                array = cell.rasters[product][band]
                grid = cell.grid.at(cell.grid.extent[0] / array.shape[1])
                write_geotiff(band_file(root, product, cell_id, ids[product], band), array, grid, dtype, compress)
