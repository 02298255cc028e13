"""One observation of one synthetic cell, as per-band rasters at native resolution.

``make_cell(seed, cell_id, observation)`` is a pure function of its arguments.
The static layers (terrain, land cover) depend on (seed, cell) only; the rest
on the observation too. What each Major TOM product holds comes from
``SENSORS`` (product -> physics); which bands are produced, and at what pixel
size, from the official modality registry (``m.product``, ``m.bands``, ``m.gsd``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable

import numpy as np

from copgen_jax.modalities import CATEGORICAL, build_registry
from copgen_jax.datasets.footprints import Grid, spatial
from copgen_jax.datasets.synthetic import optical, radar
from copgen_jax.datasets.synthetic.geometry import block_mean, block_pick, cell_grid, cell_latlon, stream
from copgen_jax.datasets.synthetic.landscape import Landscape, make_landscape
from copgen_jax.datasets.synthetic.observation import Conditions, first_date, make_conditions


class _Scene:
    """Lazily rendered layers of one observation, all on the 10 m grid."""

    def __init__(self, seed: int, cell_id: str, observation: int, footprints_per_side: int):
        self.seed, self.cell_id, self.observation = seed, cell_id, observation
        self.lat, self.lon = cell_latlon(cell_id)
        self.grid = cell_grid(cell_id, footprints_per_side)
        self.cond = make_conditions(seed, cell_id, observation, self.lat)

    @functools.cached_property
    def land(self) -> Landscape:
        return make_landscape(self.seed, self.cell_id, self.lat, self.lon, self.grid.width)

    @functools.cached_property
    def optical(self) -> dict:
        return optical.render(self.seed, self.cell_id, self.observation, self.land, self.cond)

    @functools.cached_property
    def radar(self) -> dict:
        return radar.render(self.seed, self.cell_id, self.observation, self.land, self.cond)

    def s2(self, level: str) -> dict:
        return {**dict(zip(optical.BANDS, self.optical[level])), "cloud_mask": self.optical["mask"]}


# ---------------------------------------------------------------------------
# Product ids in Sentinel naming: the reader takes the sensing time from them.
# ---------------------------------------------------------------------------


def _sensing(day: np.datetime64, lon: float, local_hours: float) -> np.datetime64:
    """UTC sensing time of a pass at ``local_hours`` local solar time."""
    seconds = int(((local_hours - lon / 15.0) % 24.0) * 3600)
    return np.datetime64(day, "s") + np.timedelta64(seconds, "s")


def _stamp(t: np.datetime64) -> str:
    return str(t).replace("-", "").replace(":", "")


def _tile(scene: _Scene) -> str:
    zone = scene.grid.crs.to_epsg() % 100
    band = "CDEFGHJKLMNPQRSTUVWX"[min(max(int((scene.lat + 80) // 8), 0), 19)]
    return f"T{zone:02d}{band}SY"


def _s2_id(level: str) -> Callable[[_Scene], str]:
    def make(scene: _Scene) -> str:
        c, orbit = scene.cond, 1 + int(stream(scene.seed, scene.cell_id, "orbit").integers(143))
        t = _stamp(_sensing(c.date, scene.lon, 10.5))
        return f"S2{c.satellite}_MSI{level}_{t}_N0500_R{orbit:03d}_{_tile(scene)}_{t[:8]}T120000"
    return make


def _s1_id(scene: _Scene) -> str:
    c = scene.cond
    local = 6.0 if np.cos(c.look_azimuth) > 0 else 18.0  # dawn / dusk orbits
    start = _sensing(c.s1_date, scene.lon, local)
    tag = int(stream(scene.seed, scene.cell_id, "s1-id", scene.observation).integers(1 << 16))
    return f"S1{c.satellite}_IW_GRDH_1SDV_{_stamp(start)}_{_stamp(start + np.timedelta64(25, 's'))}_{tag:04X}_rtc"


@dataclasses.dataclass(frozen=True)
class Sensor:
    """What a Major TOM product holds: band -> 10 m layer, its id, whether it is static."""

    layers: Callable[[_Scene], dict]
    product_id: Callable[[_Scene], str]
    static: bool = False


SENSORS = {
    "Core-S2L2A": Sensor(lambda s: s.s2("l2a"), _s2_id("L2A")),
    "Core-S2L1C": Sensor(lambda s: s.s2("l1c"), _s2_id("L1C")),
    "Core-S1RTC": Sensor(lambda s: s.radar, _s1_id),
    "Core-DEM": Sensor(lambda s: {"DEM": np.maximum(s.land.elevation, 0.0)}, lambda s: "id", static=True),
    "Core-LULC": Sensor(lambda s: {"LULC": s.land.landcover},
                        lambda s: f"{s.cell_id}_{str(first_date(s.seed, s.cell_id))[:4]}", static=True),
}


@dataclasses.dataclass
class SyntheticCell:
    """One observation of one cell. ``rasters[product][band]`` is 2-D at the band's native GSD."""

    cell_id: str
    observation: int
    grid: Grid  # the 10 m grid; ``grid.at(gsd)`` for the others
    lat: float
    lon: float
    conditions: Conditions
    landscape: Landscape
    product_ids: dict
    rasters: dict


def product_ids(seed: int, cell_id: str, observation: int, footprints_per_side: int = 6) -> dict:
    """The product id of every product of an observation, without rendering anything."""
    scene = _Scene(seed, cell_id, observation, footprints_per_side)
    return {p: s.product_id(scene) for p, s in SENSORS.items()}


def _native(layer: np.ndarray, factor: int, categorical: bool) -> np.ndarray:
    return block_pick(layer, factor) if categorical else block_mean(layer.astype(np.float32), factor)


def make_cell(seed: int, cell_id: str, observation: int = 0, footprints_per_side: int = 6,
              products: Iterable[str] | None = None) -> SyntheticCell:
    """Render one observation of a cell (all products, or only ``products``)."""
    scene = _Scene(seed, cell_id, observation, footprints_per_side)
    wanted = set(SENSORS if products is None else products)
    unknown = wanted - set(SENSORS)
    if unknown:
        raise ValueError(f"no synthetic physics for products {sorted(unknown)}; known: {sorted(SENSORS)}")
    rasters: dict = {}
    for m in spatial(build_registry()):
        if m.product not in wanted:
            continue
        layers = SENSORS[m.product].layers(scene)
        factor = int(round(m.gsd / scene.grid.gsd))
        for band in m.bands:
            rasters.setdefault(m.product, {})[band] = _native(layers[band], factor, m.kind == CATEGORICAL)
    return SyntheticCell(cell_id, observation, scene.grid, scene.lat, scene.lon, scene.cond, scene.land,
                         {p: SENSORS[p].product_id(scene) for p in rasters}, rasters)


def cloudy_sky(seed: int, cell_id: str, footprints_per_side: int, lo: float = 0.15, hi: float = 0.6,
               skip: Iterable[int] = (0,), dates: int = 40) -> tuple[np.ndarray, int]:
    """A realistic cloud gap: the clear-sky mask (True = clear, 10 m, the whole cell) of the cell's
    first date, not in ``skip``, with ``lo``-``hi`` of its sky cloudy; -> (mask, that date)."""
    skip = set(skip)
    for k in (k for k in range(dates) if k not in skip):
        # The official registry keeps the cloud mask with S2 L1C; L1C and L2A of a date share their sky.
        mask = make_cell(seed, cell_id, k, footprints_per_side, products=["Core-S2L1C"]).rasters["Core-S2L1C"]
        cloudy = mask["cloud_mask"] != 0
        if lo <= cloudy.mean() <= hi:
            return ~cloudy, k
    raise ValueError(f"{cell_id}: none of its first {dates} dates has {lo:.0%}-{hi:.0%} of its sky cloudy")
