"""Where a synthetic cell lies, and the array tools every layer of the world uses.

Cell ids follow Major TOM's naming, ``<row><U|D>_<col><R|L>``: rows are 10 km
bands of latitude counted from the equator, columns 10 km steps of longitude at
that latitude, so an id alone fixes a cell's place on the globe. Each cell gets
the UTM projection of its centre and a north-up grid snapped to 60 m, so the
10, 20, 30 and 60 m grids of all products line up pixel for pixel.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from copgen_jax.datasets.footprints import Grid

KM_PER_DEGREE = 111.32
CELL_KM = 10.0
SNAP_M = 60.0  # the coarsest S2 pixel: every product grid shares this lattice


# ---------------------------------------------------------------------------
# Cell ids and placement.
# ---------------------------------------------------------------------------


def cell_id_for(lat: float, lon: float) -> str:
    row = int(round(lat * KM_PER_DEGREE / CELL_KM))
    col = int(round(lon * KM_PER_DEGREE * math.cos(math.radians(lat)) / CELL_KM))
    return f"{abs(row)}{'U' if row >= 0 else 'D'}_{abs(col)}{'R' if col >= 0 else 'L'}"


def cell_latlon(cell_id: str) -> tuple[float, float]:
    """Centre (lat, lon) in degrees of a ``<row><U|D>_<col><R|L>`` cell id."""
    try:
        r, c = cell_id.split("_")
        row = int(r[:-1]) * (1 if r[-1] == "U" else -1 if r[-1] == "D" else None)
        col = int(c[:-1]) * (1 if c[-1] == "R" else -1 if c[-1] == "L" else None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"cell id {cell_id!r} is not '<row><U|D>_<col><R|L>' (e.g. '536U_904R')") from e
    lat = row * CELL_KM / KM_PER_DEGREE
    if abs(lat) > 84:
        raise ValueError(f"cell {cell_id} lies at latitude {lat:.1f}; UTM (and this world) stops at 84 deg")
    lon = col * CELL_KM / (KM_PER_DEGREE * max(math.cos(math.radians(lat)), 1e-6))
    return lat, (lon + 180.0) % 360.0 - 180.0


def sample_cells(seed: int, n: int, lat_range=(-56.0, 78.0)) -> list[str]:
    """``n`` distinct cell ids spread over the globe (uniform in area, land or not)."""
    rng = np.random.default_rng([seed, 7])
    cells: list[str] = []
    lo, hi = (math.sin(math.radians(v)) for v in lat_range)
    while len(cells) < n:
        lat = math.degrees(math.asin(rng.uniform(lo, hi)))
        cid = cell_id_for(lat, rng.uniform(-180.0, 180.0))
        if cid not in cells:
            cells.append(cid)
    return cells


def utm_crs(lat: float, lon: float) -> CRS:
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def cell_grid(cell_id: str, footprints_per_side: int, footprint_m: float = 1920.0, gsd: float = 10.0) -> Grid:
    """The cell's 10 m grid: ``footprints_per_side`` footprints a side, centred on the cell."""
    lat, lon = cell_latlon(cell_id)
    crs = utm_crs(lat, lon)
    (x,), (y,) = warp_transform("EPSG:4326", crs, [lon], [lat])
    side = footprints_per_side * footprint_m
    x0 = round((x - side / 2) / SNAP_M) * SNAP_M
    y0 = round((y + side / 2) / SNAP_M) * SNAP_M
    n = int(round(side / gsd))
    return Grid(crs, x0, y0, gsd, n, n)


# ---------------------------------------------------------------------------
# Randomness: one named stream per (seed, cell, observation, purpose).
# ---------------------------------------------------------------------------


def stream(seed: int, cell_id: str, purpose: str, observation: int | None = None) -> np.random.Generator:
    """A generator that depends only on its arguments (``observation=None``: static)."""
    digest = hashlib.sha256(f"{cell_id}|{purpose}".encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    obs = [0] if observation is None else [1, int(observation)]
    return np.random.default_rng([int(seed), *words, *obs])


# ---------------------------------------------------------------------------
# Fields.
# ---------------------------------------------------------------------------


def _radial_frequency(n: int, dx: float) -> np.ndarray:
    fy = np.fft.fftfreq(n, d=dx)[:, None]
    fx = np.fft.rfftfreq(n, d=dx)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def fractal(rng: np.random.Generator, n: int, beta: float, dx: float = 10.0,
            cutoff_m: float | None = None) -> np.ndarray:
    """Zero-mean, unit-std fractal field by spectral synthesis: power ~ f^-beta.

    ``beta`` near 2 is rough (texture), near 4 smooth (terrain, cloud decks);
    ``cutoff_m`` removes features longer than that wavelength.
    """
    f = _radial_frequency(n, dx).astype(np.float32)
    f[0, 0] = np.inf
    amp = f ** np.float32(-beta / 2.0)
    if cutoff_m:
        amp *= 1.0 - np.exp(-(f * np.float32(cutoff_m)) ** 2)
    spec = np.empty(f.shape, np.complex64)
    spec.real = rng.standard_normal(f.shape, dtype=np.float32)
    spec.imag = rng.standard_normal(f.shape, dtype=np.float32)
    field = np.fft.irfft2(spec * amp, s=(n, n))
    field -= field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def blur(field: np.ndarray, sigma_m: float, dx: float = 10.0) -> np.ndarray:
    """Gaussian blur (periodic) with standard deviation ``sigma_m`` metres."""
    n = field.shape[0]
    f = _radial_frequency(n, dx)
    kernel = np.exp(-2.0 * (np.pi * sigma_m * f) ** 2).astype(np.float32)
    return np.fft.irfft2(np.fft.rfft2(field.astype(np.float32)) * kernel, s=field.shape).astype(np.float32)


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Average k x k blocks: a 10 m layer seen by a coarser pixel."""
    if k == 1:
        return a
    h, w = a.shape
    return a.reshape(h // k, k, w // k, k).mean(axis=(1, 3), dtype=np.float64).astype(a.dtype)


def block_pick(a: np.ndarray, k: int) -> np.ndarray:
    """Centre sample of k x k blocks (class maps cannot be averaged)."""
    return a[k // 2::k, k // 2::k] if k > 1 else a


def uniform_hash(ids: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random value in [0, 1) per integer id (e.g. one per field parcel)."""
    x = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt & 0xFFFFFFFF))
    x ^= x >> np.uint64(31)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(29)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
