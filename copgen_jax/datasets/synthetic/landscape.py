"""The static part of a synthetic cell: terrain, climate, soil moisture and land cover.

Everything here depends on (seed, cell) only, so every observation of a cell
shares it: the DEM and the land-cover map are the same on every date.

* Terrain: fractal (spectral synthesis) height field in one of four relief
  regimes (coastal with sea, lowland, upland, mountain).
* Climate by latitude: a moisture curve with wet tropics, arid subtropical
  belts (~15-32 deg), moderate mid-latitudes and dry poles; a snow line falling
  from ~4.9 km at the equator to sea level near 72 deg.
* Moisture: the climate's, wetter on valley floors and drier on ridges and
  steep slopes. ``position`` (height above the surrounding kilometre, in units
  of its spread) carries the terrain into land cover at footprint scale, where
  a DEM at 120 m still resolves it.
* Land cover, by rule and in priority order, using the registry's codes: sea
  below 0 m and lakes on wet valley floors are water; snow/ice above the snow
  line; built-up clusters on gentle low ground; flooded vegetation on wet valley
  floors; bare ground where arid, steep, alpine or on dry ridges; crops on
  wet-enough flats below the ridges in rectangular field parcels; trees where
  moist; rangeland elsewhere.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from copgen_jax.modalities import LULC_CLASSES
from copgen_jax.datasets.synthetic.geometry import blur, fractal, stream, uniform_hash

CODE = dict(zip(LULC_CLASSES.class_names, LULC_CLASSES.codes))
WATER, TREES, FLOODED, CROPS = CODE["Water"], CODE["Trees"], CODE["Flooded vegetation"], CODE["Crops"]
BUILT, BARE, SNOW, RANGE = CODE["Built-up"], CODE["Bare ground"], CODE["Snow/Ice"], CODE["Rangeland"]

# Relief regimes: probability, base elevation range (m), relief (std of elevation, m) range.
REGIMES = {
    "coastal": (0.25, None, (5.0, 30.0)),
    "lowland": (0.30, (20.0, 300.0), (8.0, 40.0)),
    "upland": (0.25, (400.0, 1500.0), (60.0, 200.0)),
    "mountain": (0.20, (1500.0, 3500.0), (300.0, 700.0)),
}
TERRAIN_BETA = 4.2
POSITION_SCALE_M = 1000.0  # blur behind the valley/ridge position
_ABS_LAT = [0, 10, 20, 28, 35, 45, 60, 75, 90]
_MOISTURE = [0.80, 0.75, 0.35, 0.15, 0.35, 0.60, 0.55, 0.35, 0.20]
_SNOW_LAT = [0, 30, 45, 60, 72, 90]
_SNOW_M = [4900, 4500, 2800, 1500, 0, -500]


@dataclasses.dataclass
class Landscape:
    """Static layers of one cell on its 10 m grid (n x n)."""

    lat: float
    lon: float
    regime: str
    elevation: np.ndarray  # metres
    slope: np.ndarray  # radians
    aspect: np.ndarray  # downslope azimuth, radians clockwise from north
    moisture: np.ndarray  # climatological soil moisture, 0..1
    landcover: np.ndarray  # uint8 registry codes
    parcel: np.ndarray  # [0, 1) per crop parcel: sowing-date offset
    texture: np.ndarray  # unit-std fine structure of the surface
    snowline: float  # metres
    evergreen: float  # share of evergreen canopy, 0..1


def climate_moisture(lat: float) -> float:
    return float(np.interp(abs(lat), _ABS_LAT, _MOISTURE))


def snowline(lat: float) -> float:
    return float(np.interp(abs(lat), _SNOW_LAT, _SNOW_M))


def terrain(rng: np.random.Generator, n: int, dx: float = 10.0) -> tuple[str, np.ndarray]:
    names = list(REGIMES)
    regime = names[rng.choice(len(names), p=[REGIMES[k][0] for k in names])]
    _, base_range, relief_range = REGIMES[regime]
    h = 0.95 * fractal(rng, n, TERRAIN_BETA) + 0.05 * fractal(rng, n, 3.2)
    h = (h - h.mean()) / h.std()
    # Relief is quoted for a 6 x 6 footprint cell. Smaller cells get less, as the square root
    # of their extent: slower than a single fractal's L^((beta - 2) / 2), since real relief
    # keeps hills at every scale, and a 1.92 km mountain footprint keeps a hundred metres or more.
    relief = rng.uniform(*relief_range) * (n * dx / 11520.0) ** 0.5
    if base_range is None:  # coastal: a chosen share of the cell is sea
        base = -relief * float(np.quantile(h, rng.uniform(0.1, 0.5)))
    else:
        base = rng.uniform(*base_range)
    return regime, (base + relief * h).astype(np.float32)


def slope_aspect(elevation: np.ndarray, dx: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    d_south, d_east = np.gradient(elevation.astype(np.float64), dx)
    slope = np.arctan(np.hypot(d_east, d_south))
    aspect = np.mod(np.arctan2(-d_east, d_south), 2 * np.pi)  # downslope: (-d/deast, -d/dnorth)
    return slope.astype(np.float32), aspect.astype(np.float32)


def _parcels(rng: np.random.Generator, n: int, dx: float = 10.0) -> np.ndarray:
    """Integer parcel id per pixel: rotated rectangles of field size."""
    theta = rng.uniform(0, np.pi / 2)
    w, h = rng.uniform(80, 300), rng.uniform(150, 600)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) * dx
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    return (np.floor(u / w).astype(np.int64) + 4096) * 100003 + (np.floor(v / h).astype(np.int64) + 4096)


def _quantile_mask(field: np.ndarray, where: np.ndarray, fraction: float) -> np.ndarray:
    if fraction <= 0 or not where.any():
        return np.zeros_like(where)
    return where & (field > np.quantile(field[where], 1.0 - fraction))


def land_cover(rng, elevation, slope, moisture, position, snow_m, parcel_ids) -> np.ndarray:
    """Registry codes by rule; ``position`` is the standardised height above the surrounding
    kilometre (< 0 valley floors, > 0 ridges), so classes follow the terrain at footprint scale."""
    n = elevation.shape[0]
    flat = slope < 0.1
    water = (elevation < 0) | ((position < -1.4) & (moisture > 0.5) & flat)
    snow = ~water & (elevation > snow_m + 150.0 * fractal(rng, n, 3.0))
    free = ~water & ~snow
    urban_frac = rng.choice([rng.uniform(0, 0.02), rng.uniform(0.02, 0.1), rng.uniform(0.15, 0.4)],
                            p=[0.5, 0.35, 0.15])
    low_gentle = free & (slope < 0.15) & (elevation < snow_m - 300) & (position < 0.3)
    built = _quantile_mask(fractal(rng, n, 3.2), low_gentle, urban_frac)
    free &= ~built
    flooded = free & (position < -0.9) & (moisture > 0.6) & (slope < 0.05)
    free &= ~flooded
    rocky_ridge = (position > 1.3) & (moisture < 0.45)
    bare = free & ((moisture < 0.18) | (elevation > snow_m - 250) | (slope > 0.6) | rocky_ridge)
    free &= ~bare
    crop_frac = rng.uniform(0.3, 0.9)
    crops = free & flat & (moisture >= 0.28) & (moisture <= 0.85) & (position < 0.5) \
        & (elevation < min(2500.0, snow_m - 800)) & (uniform_hash(parcel_ids, int(rng.integers(1 << 30))) < crop_frac)
    free &= ~crops
    trees = free & (moisture + 0.05 * fractal(rng, n, 2.8) > 0.45)
    lc = np.full(elevation.shape, RANGE, np.uint8)
    for mask, code in ((trees, TREES), (crops, CROPS), (bare, BARE), (flooded, FLOODED),
                       (built, BUILT), (snow, SNOW), (water, WATER)):
        lc[mask] = code
    return lc


def make_landscape(seed: int, cell_id: str, lat: float, lon: float, n: int) -> Landscape:
    rng = stream(seed, cell_id, "landscape")
    regime, elevation = terrain(rng, n)
    slope, aspect = slope_aspect(elevation)
    position = elevation - blur(elevation, POSITION_SCALE_M)
    position = position / (position.std() + 1e-6)
    # Water drains to valley floors: they are wetter than the ridges around them.
    moisture = np.clip(climate_moisture(lat) + rng.normal(0, 0.08) + 0.04 * fractal(rng, n, 3.0)
                       - 0.25 * position - 0.3 * np.sin(slope), 0.0, 1.0).astype(np.float32)
    snow_m = snowline(lat) + rng.normal(0, 150)
    parcel_ids = _parcels(rng, n)
    lc = land_cover(rng, elevation, slope, moisture, position, snow_m, parcel_ids)
    texture = (0.7 * fractal(rng, n, 2.2) + 0.3 * rng.standard_normal((n, n))).astype(np.float32)
    parcel = uniform_hash(parcel_ids, int(rng.integers(1 << 30))).astype(np.float32)
    return Landscape(lat, lon, regime, elevation, slope, aspect, moisture, lc, parcel, texture,
                     float(snow_m), float(rng.uniform(0.1, 0.9)))
