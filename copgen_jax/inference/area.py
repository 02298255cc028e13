"""Generation over an area of any extent: overlapping footprint windows fused at every step.

``generate_area(model, generate, conditions, ...)`` takes condition GeoTIFFs larger than one
footprint and returns the requested modalities over their common extent, at each modality's
native resolution, on one grid:

* **Grid.** The conditions' intersection, in the first file's (metric) CRS, snapped to that
  file's pixel grid and trimmed to a whole number of *quanta*: the smallest distance on which
  the latent grids of every spatial modality line up (``lcm(gsd x downsample)``: 480 m for the
  official registry). Each condition is read onto it at its modality's GSD with
  ``rasterio.warp.reproject`` (the resampling is named in the outputs' tags).
* **Windows.** Footprints (``size x gsd``, 1920 m) every ``footprint - overlap`` metres, the
  last row and column pulled back inside the area; offsets are whole quanta, so a window's
  latents are an exact slice of the area's latent canvas.
* **Fusion** ``"step"`` (MultiDiffusion): the sampler runs on the area's latent canvas; at each
  step every window sees its slice, the network's ε predictions are averaged where windows
  overlap (weighted by a tent, highest at a window's centre), and the solver updates the
  canvas. Samples are one coherent image, not tiles.
  ``"neighbours"``: windows in waves (raster order, greedily grouped so that the windows of a
  wave do not overlap); each wave is sampled with what earlier waves left in its overlaps held
  as known latents (``samplers.sample``'s region conditioning), so a window continues its
  neighbours instead of meeting them. ``"none"``: every window sampled on its own (naive
  tiling, for comparison).
* The two fused samplers live in ``inference/fusion.py``; this module lays out the windows,
  reads and writes the rasters and decodes the canvas.
* Windows go through the network ``window_batch`` at a time (rows sharded over the mesh's batch
  axes), so memory is bounded by the window batch, not by the area. Decoded windows are blended
  with tent weights (their decoders see one footprint each, as in training).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Mapping, Sequence

import jax
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.warp import transform as warp_transform

from copgen_jax import storage
from copgen_jax.diffusion import choices
from copgen_jax.inference import fusion as fusions
from copgen_jax.inference import geo
from copgen_jax.inference import known as known_lib
from copgen_jax.inference.generation import Generation
from copgen_jax.inference.stats import sample_stats
from copgen_jax.codecs import LatLon
from copgen_jax.modalities import CATEGORICAL, Modality, ModalityError

FUSIONS = ("step", "neighbours", "none")  # the first two in inference/fusion.py
WEIGHTS = ("tent", "uniform")


@dataclasses.dataclass(frozen=True)
class AreaGrid:
    """A north-up area: CRS, top-left corner, extent in metres (whole quanta)."""

    crs: CRS
    x0: float
    y0: float
    width: float
    height: float

    def transform_for(self, gsd: float) -> Affine:
        return Affine(gsd, 0.0, self.x0, 0.0, -gsd, self.y0)

    def shape_for(self, gsd: float) -> tuple[int, int]:
        return int(round(self.height / gsd)), int(round(self.width / gsd))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Window offsets (metres from the area's corner, (row, col) = (down, right)) and the footprint side."""

    offsets: np.ndarray  # (W, 2) float
    side: float

    def pixels(self, step: float) -> np.ndarray:
        """Offsets in units of ``step`` metres (a pixel or latent pixel), int32."""
        return np.rint(self.offsets / step).astype(np.int32)


def quantum(modalities: Sequence[Modality]) -> float:
    """The smallest distance (m) that is a whole number of latent pixels of every modality."""
    steps = [round(m.gsd * m.downsample * 1000) for m in modalities]  # millimetres: exact integers
    return math.lcm(*steps) / 1000.0


def positions(extent: float, side: float, stride: float, q: float) -> list[float]:
    """Window starts along one axis: every ``stride``, the last pulled back to end at ``extent``."""
    n = int(round(extent / q))
    s, f = int(round(stride / q)), int(round(side / q))
    starts = list(range(0, max(n - f, 0) + 1, s))
    if starts[-1] + f < n:
        starts.append(n - f)
    return [a * q for a in starts]


def window_layout(grid: AreaGrid, side: float, overlap: float, q: float) -> Layout:
    if overlap < 0 or overlap >= side:
        raise ValueError(f"overlap must lie in [0, {side:g}) m (one footprint), got {overlap:g}")
    stride = side - round(overlap / q) * q
    rows, cols = positions(grid.height, side, stride, q), positions(grid.width, side, stride, q)
    return Layout(np.array([(r, c) for r in rows for c in cols], np.float64), side)


# -- reading conditions onto the area ---------------------------------------------------------
def _bounds(path) -> tuple[CRS, tuple, Affine]:
    with rasterio.open(path) as src:
        if src.crs is None:
            raise ModalityError(f"{path}: no CRS; an area needs georeferenced conditions")
        return src.crs, src.bounds, src.transform


def area_grid(paths: Mapping[str, str], side: float, q: float) -> AreaGrid:
    """The conditions' common extent in the first file's CRS, on its pixel grid, in whole quanta."""
    first = next(iter(paths.values()))
    crs, _, ref = _bounds(first)
    if not crs.is_projected:
        raise ModalityError(f"{first}: CRS {crs.to_string()} is geographic; an area needs a metric CRS "
                            "(reproject it to its UTM zone, e.g. gdalwarp -t_srs EPSG:326xx)")
    boxes = {p: transform_bounds(c, crs, *b) for p, (c, b, _) in ((p, _bounds(p)) for p in paths.values())}
    left, bottom = max(b[0] for b in boxes.values()), max(b[1] for b in boxes.values())
    right, top = min(b[2] for b in boxes.values()), min(b[3] for b in boxes.values())
    if right <= left or top <= bottom:
        raise ModalityError("the conditions do not overlap: " + "; ".join(
            f"{p} covers {tuple(round(v) for v in b)}" for p, b in boxes.items()) + f" in {crs.to_string()}")
    gsd = abs(ref.a)
    x0 = ref.c + math.ceil((left - ref.c) / gsd - 1e-6) * gsd  # snapped onto the first file's pixel grid
    y0 = ref.f - math.ceil((ref.f - top) / gsd - 1e-6) * gsd
    width, height = math.floor((right - x0) / q + 1e-6) * q, math.floor((y0 - bottom) / q + 1e-6) * q
    if width < side or height < side:
        small = min(boxes, key=lambda p: min(boxes[p][2] - boxes[p][0], boxes[p][3] - boxes[p][1]))
        raise ModalityError(f"the conditions' common extent is {right - left:.0f} x {top - bottom:.0f} m, less than "
                            f"one {side:g} m footprint (smallest: {small}); give rasters covering at least one")
    return AreaGrid(crs, x0, y0, width, height)


def _resampling(m: Modality, src_gsd: float) -> Resampling:
    coarser = m.gsd > src_gsd * (1 + 1e-6)
    if m.kind == CATEGORICAL:
        return Resampling.mode if coarser else Resampling.nearest
    return Resampling.average if coarser else Resampling.bilinear


def _reproject(path, m: Modality, grid: AreaGrid) -> tuple[np.ndarray, str]:
    """A GeoTIFF of ``m`` on the area at ``m``'s GSD: (bands, H, W) float64, NaN where invalid or outside."""
    h, w = grid.shape_for(m.gsd)
    with rasterio.open(path) as src:
        order = geo._band_order(src, m, str(path))
        src_gsd = abs(transform_bounds(src.crs, grid.crs, *src.bounds)[2]
                      - transform_bounds(src.crs, grid.crs, *src.bounds)[0]) / src.width
        method = _resampling(m, src_gsd)
        out = np.full((len(order), h, w), np.nan, np.float32)
        for i, band in enumerate(order):
            reproject(rasterio.band(src, band), out[i], src_nodata=src.nodata, dst_transform=grid.transform_for(m.gsd),
                      dst_crs=grid.crs, dst_nodata=np.nan, resampling=method)
    return out.astype(np.float64), method.name


def read_area(path, m: Modality, grid: AreaGrid) -> tuple[np.ndarray, str]:
    """A condition GeoTIFF on the area at ``m``'s GSD: physical (bands, H, W), and the resampling used."""
    out, method = _reproject(path, m, grid)
    return geo._fill_invalid(m, out, ~np.isfinite(out), str(path), "fill"), method


def _read_mask(path, m: Modality, grid: AreaGrid) -> np.ndarray:
    """A one-band mask GeoTIFF (nonzero = known) on the area at ``m``'s GSD; outside the file: unknown."""
    h, w = grid.shape_for(m.gsd)
    out = np.zeros((h, w), np.float32)
    with rasterio.open(path) as src:
        if src.count != 1:
            raise ModalityError(f"{path}: a known-pixel mask has one band (nonzero = known), this one {src.count}")
        reproject(rasterio.band(src, 1), out, src_nodata=src.nodata, dst_transform=grid.transform_for(m.gsd),
                  dst_crs=grid.crs, dst_nodata=0, resampling=Resampling.nearest)
    return out != 0


def read_known(value, m: Modality, grid: AreaGrid) -> known_lib.Known:
    """A partly known modality over the area: (GeoTIFF, mask GeoTIFF | nodata value | None) -> ``Known`` (batch 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not isinstance(value[0], (str, os.PathLike)):
        raise ModalityError(f"known[{m.name}] over an area: give (GeoTIFF path, mask GeoTIFF path | nodata value | "
                            "None); the files place the pixels on the area")
    path, spec = value
    pixels, _ = _reproject(path, m, grid)
    finite = np.isfinite(pixels).all(0)
    if isinstance(spec, (str, os.PathLike)):
        mask = _read_mask(spec, m, grid)
    elif spec is None or (isinstance(spec, (int, float, np.number)) and not isinstance(spec, (bool, np.bool_))):
        mask = finite if spec is None else (pixels != float(spec)).all(0)
    else:
        raise ModalityError(f"known[{m.name}] over an area: the mask is a GeoTIFF path (nonzero = known), a nodata "
                            f"value or None, got {type(spec).__name__}")
    mask = (mask & finite)[None]
    known_lib.check(m, mask, finite[None])
    return known_lib.Known(known_lib.fill(m, pixels[None], mask), mask)


def window_latlon(grid: AreaGrid, layout: Layout) -> np.ndarray:
    """(W, 2) (lat, lon) of every window's centre."""
    xs = grid.x0 + layout.offsets[:, 1] + layout.side / 2
    ys = grid.y0 - layout.offsets[:, 0] - layout.side / 2
    lon, lat = warp_transform(grid.crs, "EPSG:4326", list(xs), list(ys))
    return np.stack([lat, lon], 1)


# -- the result -------------------------------------------------------------------------------
@dataclasses.dataclass
class AreaGeneration:
    """samples: name -> (N, *bands, H, W) physical over the area; stats as ``sample_stats`` (N axis reduced)."""

    samples: dict
    stats: dict
    grid: AreaGrid
    layout: Layout
    registry: object
    seed: int
    settings: dict
    conditions: dict = dataclasses.field(default_factory=dict)  # spatial conditions on the area, physical

    def __getitem__(self, name):
        return self.samples[name]

    def transform_for(self, name) -> Affine:
        return self.grid.transform_for(self.registry[name].gsd)

    def as_generation(self):
        """The area as a one-input ``Generation`` (batch axis of 1): for sheets and code written for footprints."""
        return Generation({n: x[None] for n, x in self.samples.items()},
                          {n: x[None] for n, x in self.conditions.items()}, {}, self.stats, [None], self.registry,
                          self.seed, self.settings)


def is_area(paths: Mapping[str, str], registry) -> bool:
    """Whether a spatial condition GeoTIFF is not one footprint of its modality's pixels.

    Such a raster (larger than a footprint, or at another resolution) is read onto an area grid
    and resampled; one that is exactly a footprint is read as it is, as ``CopGen.generate`` does.
    """
    for name, path in paths.items():
        if not registry[name].is_scalar:
            with rasterio.open(path) as src:
                if (src.width, src.height) != (registry[name].size,) * 2:
                    return True
    return False


def write_area(out_dir, result: AreaGeneration) -> list[str]:
    """``<out>/<modality>/sample_<j>.tif`` and ``<stat>.tif`` over the area, at native resolution."""
    written = []
    tags = {k: str(v) for k, v in result.settings.items()}
    for name, samples in result.samples.items():
        m = result.registry[name]
        transform = result.transform_for(name)
        folder = storage.path(out_dir) / name
        items = [(f"sample_{j:03d}", s, m.bands) for j, s in enumerate(samples)]
        for stat, value in result.stats.get(name, {}).items():
            value = np.asarray(value[0])
            desc = m.bands if value.shape[0] == len(m.bands) else (
                m.codec.class_names if value.shape[0] == m.num_classes else (stat,) * value.shape[0])
            items.append((stat, value, desc))
        for stem, data, desc in items:
            written.append(_write(folder / f"{stem}.tif", data, m, result.grid.crs, transform, desc, tags))
    return written


def _write(path, data, m, crs, transform, descriptions, tags) -> str:
    data = np.asarray(data)
    dtype = "uint8" if m.kind == CATEGORICAL and np.issubdtype(data.dtype, np.integer) else "float32"
    profile = dict(driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0], dtype=dtype,
                   compress="deflate", crs=crs, transform=transform)
    with storage.local_file(str(path)) as local, rasterio.open(local, "w", **profile) as dst:
        dst.write(data.astype(dtype))
        for i, d in enumerate(descriptions, start=1):
            dst.set_band_description(i, d)
        dst.update_tags(modality=m.name, **tags)
    return str(path)


# -- generation -------------------------------------------------------------------------------
def generate_area(model, generate: Sequence[str] | str, conditions: Mapping, *, n_samples: int = 1, seed: int = 0,
                  steps: int = 50, sampler: str = "ddim", eta: float | None = None, spacing: str | None = None,
                  absent: str | None = None, guidance: float = 1.0, overlap: float | None = None,
                  fusion: str = "step", window_batch: int = 8, stats: bool = True,
                  quantiles: Sequence[float] = (0.05, 0.5, 0.95), known: Mapping | None = None, resample: int = 0,
                  weights: str = "tent", progress=None) -> AreaGeneration:
    """``generate`` over the common extent of ``conditions`` (GeoTIFF paths; scalars as values).

    overlap: metres shared by neighbouring windows (rounded to whole quanta; default three
    quarters of a footprint for ``"step"`` and ``"neighbours"``, none for ``"none"``). weights: how step fusion
    averages the windows' ε where they overlap: ``"tent"`` (each window weighted by a tent,
    highest at its centre, so a window's edge enters the average with almost no weight) or
    ``"uniform"`` (plain MultiDiffusion: a step in the mix wherever a window ends). The model's
    location modality, when it
    has one and it is not given, is each window's own centre.
    known: name -> (GeoTIFF, mask GeoTIFF (nonzero = known) | nodata value | None): a partly known
    modality over the area (a cloudy scene), generated with its known part held, as
    ``CopGen.generate(known=...)`` does on a footprint: the known pixels, encoded window by window,
    make one clean latent canvas whose known latent pixels the sampler holds at every step; the
    known pixels are pasted back after decoding. With ``"step"`` and ``"neighbours"``.
    """
    generate = (generate,) if isinstance(generate, str) else tuple(generate)
    known = dict(known or {})
    generate += tuple(n for n in known if n not in generate)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}: choose one of {FUSIONS}")
    if known and fusion == "none":
        raise ValueError("known pixels over an area need fusion='step' or 'neighbours' (windows tiled on their "
                         "own cannot share one known canvas)")
    reg = model.registry
    spatial_given = {n: v for n, v in conditions.items() if not reg[n].is_scalar}
    if not spatial_given:
        raise ModalityError("an area needs at least one spatial condition (a GeoTIFF) to define its extent")
    mods = [reg[n] for n in (*generate, *spatial_given) if not reg[n].is_scalar]
    side, q = mods[0].size * mods[0].gsd, quantum(mods)
    grid = area_grid({**spatial_given, **{n: v[0] for n, v in known.items() if isinstance(v, (tuple, list))}},
                     side, q)
    partial = {n: read_known(v, reg[n], grid) for n, v in known.items()}
    # Three quarters of a footprint: measured seamless on the demo (benchmarks/area.py; half a
    # footprint leaves seams at 1.4 x the truth's ratio for a third of the windows).
    overlap = (side * 3 / 4 if fusion != "none" else 0.0) if overlap is None else float(overlap)
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {WEIGHTS}")
    layout = window_layout(grid, side, overlap, q)
    read = {n: read_area(p, reg[n], grid) for n, p in spatial_given.items()}
    windows = {n: _cut(a, layout.pixels(reg[n].gsd), reg[n].size) for n, (a, _) in read.items()}
    scalars = {n: np.broadcast_to(np.asarray(v), (len(layout.offsets), *np.shape(v)))
               for n, v in conditions.items() if reg[n].is_scalar}
    location = next((m.name for m in reg if isinstance(m.codec, LatLon)), None)
    if location and location not in scalars and location not in generate:
        scalars[location] = window_latlon(grid, layout)
    absent = absent or model.default_absent
    spacing = spacing or choices.default_spacing(sampler)  # sampler, eta, spacing: as CopGen.generate's
    eta = choices.default_eta(sampler) if eta is None else eta
    opts = dict(steps=steps, sampler=sampler, eta=eta, spacing=spacing, absent=absent, guidance=guidance)
    key = jax.random.key(seed)
    if fusion == "none":
        canvas = _independent(model, generate, {**windows, **scalars}, layout, grid, n_samples, seed, window_batch,
                              opts)
    else:
        cond = _encode_windows(model, {**windows, **scalars}, window_batch, jax.random.fold_in(key, 0))
        held = _known_canvas(model, partial, layout, grid, window_batch, jax.random.fold_in(key, 2))
        fuse = fusions.step_fused if fusion == "step" else fusions.neighbour_conditioned
        canvas = fuse(model, generate, cond, layout, grid, n_samples, window_batch, jax.random.fold_in(key, 1),
                      opts, progress, held, resample, weights)
        canvas = {n: _decode_canvas(model, reg[n], z, layout, grid, window_batch) for n, z in canvas.items()}
        canvas.update({n: known_lib.paste(canvas[n][None], k)[0] for n, k in partial.items()})
    summary = {n: sample_stats(reg[n], canvas[n][None], quantiles) for n in generate} if stats else {}
    settings = dict(generate=",".join(generate), given=",".join(sorted(conditions)), n_samples=n_samples,
                    fusion=fusion, overlap_m=float(layout.side - _stride(layout)), windows=len(layout.offsets),
                    resampling=",".join(f"{n}:{r}" for n, (_, r) in read.items()), seed=seed,
                    known=",".join(sorted(partial)), resample=resample, weights=weights, **opts)
    return AreaGeneration(canvas, summary, grid, layout, reg, seed, settings, {n: a for n, (a, _) in read.items()})


def _stride(layout: Layout) -> float:
    starts = np.unique(layout.offsets[:, 1])
    return float(starts[1] - starts[0]) if len(starts) > 1 else layout.side


def _cut(area: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W) area -> (W, ..., size, size) windows at pixel ``offsets``."""
    return np.stack([area[..., r:r + size, c:c + size] for r, c in offsets])


def _encode_windows(model, physical: Mapping, batch: int, key) -> dict:
    """Per-window physical conditions -> scaled latents (W, C, h, w), ``batch`` windows at a time."""
    n = len(next(iter(physical.values())))
    # The first chunk draws with ``key`` itself, as ``CopGen.generate`` does: one window is one footprint.
    parts = [model._encode({k: model.registry[k].normalize(v[idx]) for k, v in physical.items()},
                           jax.random.fold_in(key, i) if i else key) for i, idx in enumerate(fusions.chunks(n, batch))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _independent(model, generate, physical, layout, grid, n, seed, batch, opts) -> dict:
    """Naive tiling: each window sampled on its own, decoded windows blended where they overlap."""
    parts = [model.generate(list(generate), {k: v[idx] for k, v in physical.items()}, n_samples=n, seed=seed + i,
                            **opts) for i, idx in enumerate(fusions.chunks(len(layout.offsets), batch))]
    out = {}
    for name in generate:
        m = model.registry[name]
        windows = np.concatenate([p.samples[name] for p in parts])  # (W, N, *physical)
        h, w = grid.shape_for(m.gsd)
        acc, weight = _blend(windows.astype(np.float64), layout.pixels(m.gsd), m.size, (h, w))
        out[name] = np.rint(acc / weight).astype(np.int64) if m.kind == CATEGORICAL else (acc / weight)
    return out


def _blend(windows: np.ndarray, offsets: np.ndarray, size: int, shape) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum over windows (W, N, C, size, size) placed at ``offsets`` -> (N, C, H, W), weights (H, W)."""
    tent = fusions.tent(size)
    acc = np.zeros((*windows.shape[1:3], *shape))
    weight = np.zeros(shape)
    for (r, c), x in zip(offsets, windows):
        acc[..., r:r + size, c:c + size] += x * tent
        weight[r:r + size, c:c + size] += tent
    return acc, weight


def _decode_canvas(model, m: Modality, z: np.ndarray, layout: Layout, grid: AreaGrid, batch: int) -> np.ndarray:
    """Latent canvas (N, C, Hl, Wl) -> physical (N, bands, H, W): windows decoded, blended in network range."""
    h = m.latent_shape[1]
    flat = _cut(z, layout.pixels(m.gsd * m.downsample), h) / np.float32(m.scale_factor)  # (W, N, C, h, h)
    wins, n = flat.shape[:2]
    decoded = np.concatenate(list(model._decode_chunks(m, flat.reshape(wins * n, *flat.shape[2:]))))[: wins * n]
    decoded = decoded.reshape(wins, n, *decoded.shape[1:]).astype(np.float64)
    acc, weight = _blend(decoded, layout.pixels(m.gsd), m.size, grid.shape_for(m.gsd))
    x = m.codec.decode(acc / weight)
    return x.astype(np.int64) if m.kind == CATEGORICAL else x


def _known_canvas(model, partial, layout, grid, batch, key) -> dict:
    """Known pixels -> (clean latent canvas (C, Hl, Wl), latent mask (Hl, Wl)) per partly known modality.

    Each window is encoded as a footprint (the tokenizer's context) and the window latents are
    blended where windows overlap; a latent pixel is held when every pixel under it is known.
    """
    out = {}
    for name, k in partial.items():
        m = model.registry[name]
        windows = _cut(k.pixels[0], layout.pixels(m.gsd), m.size)
        z = _encode_windows(model, {name: windows}, batch, jax.random.fold_in(key, model.registry.index(name)))[name]
        acc, weight = _blend(z[:, None].astype(np.float64), layout.pixels(m.gsd * m.downsample), m.latent_shape[1],
                             grid.shape_for(m.gsd * m.downsample))
        out[name] = ((acc[0] / weight).astype(np.float32), known_lib.latent_mask(k.mask, m.downsample)[0])
    return out


