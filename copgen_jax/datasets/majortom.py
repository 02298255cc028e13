"""Read Major TOM grid cells into footprint records (see ``datasets.footprints``).

Expected folder layout (as Major TOM ships it and the reference release reads it)::

    ROOT/
      Core-S2L2A/<row>/<cell_id>/<product_id>/<band>.tif    B01 ... B12, B8A, cloud_mask
      Core-S2L1C/<row>/<cell_id>/<product_id>/<band>.tif    B01 ... B12, B8A, B10, cloud_mask
      Core-S1RTC/<row>/<cell_id>/<product_id>/<band>.tif    vv, vh (linear power)
      Core-DEM/<row>/<cell_id>/<product_id>/DEM.tif         metres
      Core-LULC/<row>/<col>/<cell_id>_<year>.tif            land-cover codes (one file per year)

``cell_id`` is ``<row>_<col>`` (e.g. ``536U_904R``). Which product folder and
which ``<band>.tif`` feed a modality comes from the registry (``m.product``,
``m.bands``). Each file holds one band at its native resolution (S2 1068 px at
10 m, 534 at 20 m, 178 at 60 m; DEM 356 px at 30 m); any CRS.

Per cell:

* **Grid.** The CRS, origin and extent shared by most modalities' files (in a
  metric CRS; ties: finest GSD first) fix the cell grid. Every band is read
  onto that grid at its modality's GSD: a window read when CRS and pixel size
  match, otherwise ``rasterio.warp.reproject``. A file that does not cover the
  cell is an error.
* **Footprints.** ``ceil(extent / 1920 m)`` per side (6 for a 10.68 km cell),
  the last row and column pulled back inside the cell as the reference does.
* **Observations.** The product with the most folders in the cell defines the
  observations (one per folder, by date); every other product contributes its
  folder nearest in date (a product with one folder, e.g. DEM or land cover, is
  shared by all observations).
* **Dates.** A product's acquisition time is the sensing time in its Sentinel
  product id (``..._YYYYMMDDTHHMMSS_...``: the ``timestamp`` of Major TOM's
  ``metadata.parquet``); land-cover files carry only a year and give no date.
  The record's date is the mean of the distinct sensing days (S1 and S2: their
  midpoint). No dated product: no date modality.
* **Absent.** A product with no folder for the cell, or a modality with a band
  file missing: that modality is absent (missing files are counted in the report).
* **Bad input.** Wrong band count, non-numeric dtype, no CRS, a file that does
  not cover the cell, class codes outside the table: :class:`DataError` naming
  the file. NaN and declared-nodata pixels: ``InvalidPolicy`` (fill and count,
  drop the modality from that footprint and count, or raise).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import rasterio

from copgen_jax.modalities import CATEGORICAL, Registry
from copgen_jax.datasets.footprints import (DataError, Grid, InvalidPolicy, ReadReport, cut_footprints, hash_split,
                                 mean_date, spatial)
from copgen_jax.datasets.raster import check_codes, read_to_grid

# Products stored as one file per cell and year instead of one folder per product.
SINGLE_FILE_PRODUCTS = frozenset({"Core-LULC"})
_SENSING = re.compile(r"(\d{8})T\d{6}")
_YEAR = re.compile(r"_(\d{4})$")


@dataclasses.dataclass(frozen=True)
class Product:
    """One product of one cell: a folder of band files (or a single file)."""

    product: str
    cell_id: str
    product_id: str
    path: Path
    date: np.datetime64 | None  # sensing day, None when the id carries none
    single_file: bool = False

    def band_path(self, band: str) -> Path:
        return self.path if self.single_file else self.path / f"{band}.tif"


def find_root(path) -> Path:
    """The folder under ``path`` that holds the ``Core-*`` product folders (an archive may add a top folder)."""
    for folder, subdirs, _ in os.walk(path):
        if any(d.startswith("Core-") for d in subdirs):
            return Path(folder)
    raise DataError(f"no Core-* product folder under {path}; a Major TOM folder holds Core-S2L2A/, Core-DEM/, ...")


def split_cell_id(cell_id: str) -> tuple[str, str]:
    parts = cell_id.split("_")
    if len(parts) != 2 or not all(parts):
        raise DataError(f"cell id {cell_id!r} is not '<row>_<col>' (e.g. '536U_904R')")
    return parts[0], parts[1]


def product_dir(root, product: str, cell_id: str, product_id: str) -> Path:
    """Where a product's band files live (for single-file products: the file)."""
    row, col = split_cell_id(cell_id)
    if product in SINGLE_FILE_PRODUCTS:
        return Path(root) / product / row / col / f"{product_id}.tif"
    return Path(root) / product / row / cell_id / product_id


def sensing_date(product_id: str) -> np.datetime64 | None:
    """The sensing day in a Sentinel product id, or None."""
    m = _SENSING.search(product_id)
    if not m:
        return None
    s = m.group(1)
    return np.datetime64(f"{s[:4]}-{s[4:6]}-{s[6:]}", "D")


def find_products(root, product: str, cell_id: str) -> list[Product]:
    """All products of one kind for a cell, oldest first (undated ones by name)."""
    row, col = split_cell_id(cell_id)
    single = product in SINGLE_FILE_PRODUCTS
    if single:
        paths = sorted((Path(root) / product / row / col).glob(f"{cell_id}_*.tif"))
        ids = [p.stem for p in paths]
    else:
        base = Path(root) / product / row / cell_id
        paths = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if base.is_dir() else []
        ids = [p.name for p in paths]
    found = [Product(product, cell_id, i, p, sensing_date(i), single) for i, p in zip(ids, paths)]
    return sorted(found, key=lambda f: (f.date is None, f.date or np.datetime64(0, "D"), f.product_id))


def _products(registry: Registry) -> list[str]:
    return sorted({m.product for m in spatial(registry)})


def list_cells(root, registry: Registry | None = None) -> list[str]:
    """Cell ids with at least one product folder under ``root`` (all ``Core-*`` if no registry)."""
    root = Path(root)
    products = _products(registry) if registry is not None else sorted(
        p.name for p in root.glob("Core-*") if p.is_dir())
    cells = set()
    for product in products:
        for row in (root / product).glob("*"):
            if not row.is_dir() or row.name.startswith("."):
                continue
            if product in SINGLE_FILE_PRODUCTS:
                cells.update(f"{row.name}_{p.stem.split('_')[1]}" for p in row.glob(f"*/{row.name}_*_*.tif"))
            else:
                cells.update(p.name for p in row.iterdir() if p.is_dir() and "_" in p.name)
    return sorted(cells)


def _nearest(found: list[Product], anchor: Product, k: int) -> Product | None:
    if len(found) == 1:
        return found[0]
    if anchor.date is not None and all(f.date is not None for f in found):
        return min(found, key=lambda f: abs(int((f.date - anchor.date).astype(np.int64))))
    return found[k] if k < len(found) else None


def observations(found: dict[str, list[Product]]) -> list[dict[str, Product]]:
    """Pair the products of a cell into observations (see the module docstring)."""
    found = {p: f for p, f in found.items() if f}
    if not found:
        return []
    anchor = max(sorted(found), key=lambda p: len(found[p]))
    obs = []
    for k, a in enumerate(found[anchor]):
        chosen = {p: _nearest(f, a, k) for p, f in found.items()}
        obs.append({p: c for p, c in chosen.items() if c is not None})
    return obs


def _reference_grid(registry: Registry, files: dict) -> Grid:
    """The cell grid: the footprint (CRS, origin, extent) most modalities' files share.

    Only files in a metric projected CRS qualify; ties go to the finest GSD, then
    registry order, and the grid takes that file's pixel size.
    """
    order = {m.name: i for i, m in enumerate(registry)}
    grids = {}
    for name in sorted(files, key=lambda n: (registry[n].gsd, order[n])):
        with rasterio.open(files[name][0]) as src:
            if src.crs is not None and src.crs.is_projected and src.crs.linear_units_factor[1] == 1.0:
                grids[name] = Grid.of(src)
    if not grids:
        raise DataError(f"no file in a metric projected CRS defines the cell grid "
                        f"({', '.join(str(f[0]) for f in files.values())}); Major TOM products are in UTM")
    place = lambda g: (g.crs.to_wkt(), round(g.x0, 3), round(g.y0, 3), *(round(e, 3) for e in g.extent))  # noqa
    votes = collections.Counter(place(g) for g in grids.values())
    return max(grids.values(), key=lambda g: votes[place(g)])  # max keeps the first of equals


def read_layers(registry: Registry, chosen: dict[str, Product], report: ReadReport):
    """Read every present modality of one observation onto the cell grid.

    Returns (grid, layers, files): layers map modality name -> (C, H, W)
    float32 at ``grid.at(m.gsd)`` with NaN for invalid pixels.
    """
    files = {}
    for m in spatial(registry):
        if m.product not in chosen:
            continue
        paths = [chosen[m.product].band_path(b) for b in m.bands]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            report.absent[(m.name, "missing file")] += 1
            report.note(f"{m.name} absent for {chosen[m.product].cell_id}: missing {', '.join(map(str, missing))}")
            continue
        files[m.name] = paths
    if not files:
        return None, {}, {}
    grid = _reference_grid(registry, files)
    layers = {}
    for name, paths in files.items():
        m = registry[name]
        categorical = m.kind == CATEGORICAL
        layer = np.stack([read_to_grid(p, grid.at(m.gsd), categorical) for p in paths])
        if categorical:
            check_codes(m, layer, paths)
        layers[name] = layer
    return grid, layers, files


def cell_footprints(root, registry: Registry, cell_id: str, split: str = "train",
                    policy: InvalidPolicy = InvalidPolicy(), report: ReadReport | None = None) -> Iterator[dict]:
    """Footprint records of every observation of one cell."""
    report = report if report is not None else ReadReport()
    found = {p: find_products(root, p, cell_id) for p in _products(registry)}
    obs = observations(found)
    if not obs:
        raise DataError(f"cell {cell_id}: no product folder under {root} for any of {_products(registry)}; "
                        f"expected e.g. {product_dir(root, _products(registry)[0], cell_id, '<product_id>')}")
    for k, chosen in enumerate(obs):
        grid, layers, files = read_layers(registry, chosen, report)
        if grid is None:
            continue
        date = mean_date(c.date for c in chosen.values())
        yield from cut_footprints(registry, layers, grid, files, cell_id=cell_id, observation=k, split=split,
                                  date=date, policy=policy, report=report)


def iter_footprints(root, registry: Registry, cells: Iterable[str] | None = None,
                    split_fn: Callable[[str], str] = hash_split, policy: InvalidPolicy = InvalidPolicy(),
                    report: ReadReport | None = None) -> Iterator[dict]:
    """Footprint records for ``cells`` (default: every cell found under ``root``).

    ``split_fn(cell_id)`` gives the split (default: a stable hash, 10% test).
    Pass a ``ReadReport`` to collect fills, drops and missing files.
    """
    for cell_id in (list_cells(root, registry) if cells is None else cells):
        yield from cell_footprints(root, registry, cell_id, split_fn(cell_id), policy, report)
