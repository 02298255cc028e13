"""Georeferencing: read condition GeoTIFFs, write generated modalities onto the footprint.

A *footprint* is the square that every spatial modality of one example covers
(``m.size * m.gsd`` metres: 1920 m officially, 192 px at 10 m, 96 at 20 m, 64 at
30 m, 32 at 60 m). It is stored as the affine map of the whole footprint taken as
one pixel, so a modality's own grid is that map scaled by ``1 / m.size``: its
top-left corner is the footprint's and its pixel size is ``side / m.size``. Every
output lands exactly on the footprint whatever its GSD (the reference CLI wrote a
centre crop with the whole tile's transform, 4.38 km off).

Invalid condition pixels (NaN or the file's nodata value) are filled with a
neutral value, the band's median of valid pixels (class maps: the most frequent
valid class), and counted in ``Raster.filled``: the model is then told nothing
about holes that are not in the ground truth. ``nodata="error"`` refuses them; ``nodata="keep"``
returns them as NaN (a partly known modality, ``inference/known.py``, takes them as unknown).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from copgen_jax.modalities import CATEGORICAL, Modality, ModalityError, Registry
from copgen_jax import storage

log = logging.getLogger(__name__)
NODATA_MODES = ("fill", "error", "keep")


@dataclasses.dataclass(frozen=True)
class Footprint:
    """A footprint on the map: CRS and the affine map of the footprint as a single pixel."""

    crs: CRS | None
    unit: Affine  # pixel (0, 0) -> top-left corner, (1, 1) -> bottom-right corner

    @classmethod
    def from_grid(cls, crs, transform, pixels: int) -> "Footprint":
        """The footprint covered by a ``pixels`` x ``pixels`` raster with ``transform``."""
        crs = CRS.from_user_input(crs) if crs is not None else None
        return cls(crs, Affine(*tuple(transform)[:6]) @ Affine.scale(pixels))

    @classmethod
    def centred_on(cls, lat: float, lon: float, side: float) -> "Footprint":
        """A north-up ``side`` m footprint in the point's UTM zone, centred on (lat, lon)."""
        zone = int((lon + 180.0) // 6.0) % 60 + 1
        crs = CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
        (x,), (y,) = warp_transform("EPSG:4326", crs, [lon], [lat])
        return cls(crs, Affine(side, 0.0, x - side / 2, 0.0, -side, y + side / 2))

    def transform_for(self, m: Modality) -> Affine:
        """The geotransform of modality ``m``'s native grid on this footprint."""
        return self.unit @ Affine.scale(1.0 / m.size)

    @property
    def side(self) -> float:
        """Side length in CRS units (metres for projected CRSs)."""
        return math.sqrt(abs(self.unit.determinant))

    @property
    def corner(self) -> tuple[float, float]:
        return self.unit.c, self.unit.f

    def centre_latlon(self) -> tuple[float, float]:
        """(lat, lon) in degrees of the footprint's centre."""
        x, y = self.unit @ (0.5, 0.5)
        (lon,), (lat,) = warp_transform(self.crs, "EPSG:4326", [x], [y])
        return lat, lon

    def matches(self, other: "Footprint", tolerance: float = 0.5) -> bool:
        """Same CRS and corners within ``tolerance`` CRS units."""
        if (self.crs is None) != (other.crs is None) or (self.crs is not None and self.crs != other.crs):
            return False
        return all(abs(a - b) <= tolerance for a, b in zip(self.unit @ (0, 0) + self.unit @ (1, 1),
                                                           other.unit @ (0, 0) + other.unit @ (1, 1)))


@dataclasses.dataclass
class Raster:
    """A condition read from a GeoTIFF: physical values (bands, H, W) and where they lie."""

    data: np.ndarray
    crs: CRS | None
    transform: Affine
    path: str
    filled: int = 0  # invalid pixels replaced by the nodata policy

    @property
    def footprint(self) -> Footprint | None:
        if self.crs is None:
            return None
        return Footprint.from_grid(self.crs, self.transform, self.data.shape[-1])


def _expected(m: Modality) -> str:
    return (f"{len(m.bands)} band(s) ({', '.join(m.bands)}) of {m.size}x{m.size} px at {m.gsd:g} m "
            f"per pixel ({m.size * m.gsd:g} m footprint)")


def _band_order(src, m: Modality, path: str) -> list[int]:
    """1-based band indices in the registry's order; band descriptions reorder when they name the bands."""
    if src.count != len(m.bands):
        raise ModalityError(f"{path}: {src.count} band(s), but {m.name} expects {_expected(m)}")
    names = [d or "" for d in src.descriptions]
    if sorted(names) == sorted(m.bands):
        return [names.index(b) + 1 for b in m.bands]
    return list(range(1, src.count + 1))


def _check_grid(src, m: Modality, path: str) -> None:
    if (src.height, src.width) != (m.size, m.size):
        raise ModalityError(f"{path}: {src.width}x{src.height} px, but {m.name} expects {_expected(m)}; "
                            f"resample or crop it to {m.size}x{m.size} px")
    if src.crs is None:
        return
    if not src.crs.is_projected:
        raise ModalityError(f"{path}: CRS {src.crs} is not projected (pixel sizes in degrees); warp it to a "
                            f"metric CRS such as UTM with {m.gsd:g} m pixels")
    t = src.transform
    px = math.sqrt(abs(t.determinant))
    if not math.isclose(px, m.gsd, rel_tol=0.01):
        raise ModalityError(f"{path}: {px:g} m pixels, but {m.name} expects {_expected(m)}; "
                            f"resample it to {m.gsd:g} m")


def _fill_invalid(m: Modality, data: np.ndarray, invalid: np.ndarray, path: str, nodata: str) -> np.ndarray:
    n = int(invalid.sum())
    if not n:
        return data
    if nodata == "keep":
        return np.where(invalid, np.nan, data)
    if nodata == "error":
        raise ModalityError(f"{path}: {n} NaN/nodata pixels in {m.name}; fill them, or read with nodata='fill'")
    out = data.copy()
    for band, bad in zip(out, invalid):
        valid = band[~bad]
        if not valid.size:
            raise ModalityError(f"{path}: every pixel of a {m.name} band is NaN/nodata; nothing to condition on")
        if m.kind == CATEGORICAL:
            codes, counts = np.unique(valid, return_counts=True)
            band[bad] = codes[np.argmax(counts)]
        else:
            band[bad] = np.median(valid)
    log.warning("%s: %d NaN/nodata pixels of %s filled (band median / most frequent class)", path, n, m.name)
    return out


def read_condition(path, m: Modality, nodata: str = "fill") -> Raster:
    """Read a GeoTIFF as a condition for ``m``: checked bands, size and pixel size; physical units."""
    path = os.fspath(path)
    if m.is_scalar:
        raise ModalityError(f"{m.name} is a scalar modality: give its value, not a raster ({path})")
    if nodata not in NODATA_MODES:
        raise ValueError(f"nodata={nodata!r}: choose one of {NODATA_MODES}")
    if not storage.path(path).exists():
        raise FileNotFoundError(f"condition {m.name}: {path} does not exist")
    with _open_raster(path) as src:
        order = _band_order(src, m, path)
        _check_grid(src, m, path)
        data = src.read(order).astype(np.float64)
        invalid = ~np.isfinite(data)
        if src.nodata is not None and not np.isnan(src.nodata):
            invalid |= data == src.nodata
        crs = src.crs
        transform = src.transform if crs is not None else Affine.identity()
    filled = _fill_invalid(m, data, invalid, path, nodata)
    return Raster(filled, crs, transform, path, int(invalid.sum()))


def read_mask(path, m: Modality) -> np.ndarray:
    """A one-band GeoTIFF on ``m``'s grid as a boolean (H, W) mask: nonzero = known (NaN / nodata: not)."""
    path = os.fspath(path)
    if not storage.path(path).exists():
        raise FileNotFoundError(f"mask {path} does not exist")
    with _open_raster(path) as src:
        if src.count != 1 or (src.height, src.width) != (m.size, m.size):
            raise ModalityError(f"{path}: a mask of {src.count} band(s) of {src.width}x{src.height} px, but the "
                                f"mask of {m.name} must be 1 band of {m.size}x{m.size} px (its {m.gsd:g} m grid), "
                                "nonzero = known")
        data = src.read(1).astype(np.float64)
        valid = np.isfinite(data) if src.nodata is None or np.isnan(src.nodata) else np.isfinite(data) & (
            data != src.nodata)
    return valid & (np.nan_to_num(data) != 0)


def write_raster(path, data: np.ndarray, m: Modality, footprint: Footprint | None, *,
                 descriptions=None, tags=None) -> str:
    """Write (bands, H, W) of modality ``m`` at its native grid on ``footprint``.

    Class maps are written as uint8 class codes, everything else as float32.
    """
    path = os.fspath(path)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    dtype = "uint8" if m.kind == CATEGORICAL and np.issubdtype(data.dtype, np.integer) else "float32"
    profile = dict(driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0], dtype=dtype,
                   compress="deflate")
    if footprint is not None:
        profile.update(crs=footprint.crs, transform=footprint.unit @ Affine.scale(1.0 / data.shape[-1]))
    with storage.local_file(path) as local, rasterio.open(local, "w", **profile) as dst:
        dst.write(data.astype(dtype))
        for i, d in enumerate(descriptions or m.bands[: data.shape[0]], start=1):
            dst.set_band_description(i, d)
        dst.update_tags(modality=m.name, **(tags or {}))
    return path


@contextlib.contextmanager
def _open_raster(path: str):
    """rasterio's dataset of a local file, or of a URI's bytes read through ``storage``."""
    if storage.is_local(path):
        with rasterio.open(path) as src:
            yield src
    else:
        with rasterio.MemoryFile(storage.path(path).read_bytes()) as mem, mem.open() as src:
            yield src


def write_generation(out_dir, generation, footprint: Footprint | None, item: int = 0) -> list[str]:
    """One GeoTIFF per sample and spatial modality, plus the per-pixel statistics, for input ``item``.

    Layout: ``<out>/<modality>/sample_<j>.tif`` and ``<out>/<modality>/<stat>.tif``
    (``mean``, ``std``, ``q05``... for images; ``mode`` and ``uncertainty`` for class maps).
    """
    written = []
    reg: Registry = generation.registry
    for name, samples in generation.samples.items():
        m = reg[name]
        if m.is_scalar:
            continue
        folder = storage.path(out_dir) / name
        for j, sample in enumerate(samples[item]):
            written.append(write_raster(folder / f"sample_{j:03d}.tif", sample, m, footprint,
                                        tags={"sample": str(j), "seed": str(generation.seed)}))
        for stat, value in generation.stats.get(name, {}).items():
            value = np.asarray(value[item])
            if value.ndim < 2:
                continue
            desc = (m.bands if value.shape[0] == len(m.bands) else
                    m.codec.class_names if value.shape[0] == m.num_classes else (stat,) * value.shape[0])
            written.append(write_raster(folder / f"{stat}.tif", value, m, footprint,
                                        descriptions=desc, tags={"statistic": stat}))
    return written


def record_footprint(record: dict, registry: Registry) -> Footprint:
    """The footprint of a footprint record (its transform describes the finest-GSD grid)."""
    finest = min(m.gsd for m in registry.spatial)
    side = registry.spatial[0].size * registry.spatial[0].gsd
    return Footprint.from_grid(record["crs"], record["transform"], int(round(side / finest)))


def write_record(record: dict, registry: Registry, out_dir, names=None) -> dict[str, str]:
    """A footprint record's spatial modalities as condition GeoTIFFs: name -> path."""
    footprint = record_footprint(record, registry)
    names = [n for n in (names or record["pixels"]) if not registry[n].is_scalar]
    return {n: write_raster(storage.path(out_dir) / f"{n}.tif", record["pixels"][n], registry[n], footprint)
            for n in names}
