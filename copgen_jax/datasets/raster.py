"""Reading one-band rasters onto a footprint grid, with the checks that name bad files."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from copgen_jax.modalities import Modality
from copgen_jax.datasets.footprints import DataError, Grid, check_georeferenced, crs_string


def _check_band_file(src) -> None:
    if src.count != 1:
        raise DataError(f"{src.name}: {src.count} bands, expected 1 (Major TOM stores one band per file)")
    kind = np.dtype(src.dtypes[0]).kind
    if kind not in "uif":
        raise DataError(f"{src.name}: dtype {src.dtypes[0]} is not a real number type; "
                        f"expected integer or float pixels")


def _resolution_in(src, grid: Grid) -> float:
    """The file's pixel size measured in the grid's CRS units."""
    left, _, right, _ = transform_bounds(src.crs, grid.crs, *src.bounds)
    return (right - left) / src.width


def _covers(src, grid: Grid) -> bool:
    """Whether the file covers the grid, allowing one source pixel of slack per side."""
    left, bottom, right, top = transform_bounds(src.crs, grid.crs, *src.bounds)
    slack = max(abs(src.res[0]), abs(src.res[1])) if src.crs == grid.crs else grid.gsd
    gl, gb, gr, gt = grid.bounds
    return left <= gl + slack and bottom <= gb + slack and right >= gr - slack and top >= gt - slack


def _aligned_window(src, grid: Grid) -> Window | None:
    """The integer window that reads ``grid`` exactly, if no resampling is needed."""
    t = src.transform
    if src.crs != grid.crs or t.b or t.d or not (math.isclose(t.a, grid.gsd, rel_tol=1e-9)
                                                  and math.isclose(-t.e, grid.gsd, rel_tol=1e-9)):
        return None
    col, row = (grid.x0 - t.c) / t.a, (t.f - grid.y0) / t.a
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    col, row = int(round(col)), int(round(row))
    if col < 0 or row < 0 or col + grid.width > src.width or row + grid.height > src.height:
        return None
    return Window(col, row, grid.width, grid.height)


def read_to_grid(path, grid: Grid, categorical: bool = False) -> np.ndarray:
    """Read a one-band raster onto ``grid``: float32 (H, W), NaN where invalid.

    Same CRS and pixel size on whole-pixel offsets: a plain window read. Any
    other CRS or resolution: ``rasterio.warp.reproject`` (nearest / mode for
    class codes; bilinear when refining, average when coarsening images).
    Errors name the file: wrong band count or dtype, no CRS, or a footprint that
    does not cover the grid (wrong size or location).
    """
    with warnings.catch_warnings():
        # A file without georeferencing is reported below as a DataError naming it.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(path)
    with src:
        _check_band_file(src)
        check_georeferenced(src)
        if not _covers(src, grid):
            raise DataError(
                f"{path}: covers {tuple(round(b, 1) for b in transform_bounds(src.crs, grid.crs, *src.bounds))} "
                f"in {crs_string(grid.crs)} ({src.width}x{src.height} px at {_resolution_in(src, grid):g} m), but the "
                f"scene needs {tuple(round(b, 1) for b in grid.bounds)}; wrong size, CRS or location")
        window = _aligned_window(src, grid)
        nodata = src.nodata
        if window is not None:
            data = src.read(1, window=window).astype(np.float32)
        else:
            data = np.full((grid.height, grid.width), np.nan, np.float32)
            coarser = grid.gsd > _resolution_in(src, grid) * (1 + 1e-6)
            method = (Resampling.mode if coarser else Resampling.nearest) if categorical else (
                Resampling.average if coarser else Resampling.bilinear)
            reproject(rasterio.band(src, 1), data, src_nodata=nodata, dst_transform=grid.transform,
                      dst_crs=grid.crs, dst_nodata=np.nan, resampling=method)
    if nodata is not None and not np.isnan(nodata):
        data[data == np.float32(nodata)] = np.nan
    return data


def check_codes(m: Modality, layer: np.ndarray, files: Sequence) -> None:
    """Class codes must be whole numbers from the modality's table."""
    valid = layer[np.isfinite(layer)]
    if valid.size and np.any(valid != np.round(valid)):
        raise DataError(f"{', '.join(map(str, files))}: {m.name} holds non-integer class codes; "
                        f"expected codes {list(m.codec.codes)}")
    bad = np.setdiff1d(np.unique(valid), np.asarray(m.codec.codes))
    if bad.size:
        raise DataError(f"{', '.join(map(str, files))}: {m.name} has codes {bad[:10].astype(int).tolist()} "
                        f"outside its table {list(m.codec.codes)}")
