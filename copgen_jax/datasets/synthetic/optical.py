"""Sentinel-2 over a synthetic cell: L2A surface reflectance, L1C top of atmosphere, cloud mask.

Digital numbers are reflectance x 10 000, computed at 10 m for all 13 bands.

* Surface: per land-cover class a "green" and a "dormant" spectrum (field
  spectra of leaves, soils, water, snow, roofs), mixed by phenology: deciduous
  share of trees, per-parcel crop calendars, dry-season grass. Wet soil is
  darker (most in the SWIR); winter brings snow above a seasonal snow line;
  turbid water is brighter in the visible.
* Terrain illumination: Lambertian ``cos(i) / cos(sun zenith)`` from the DEM's
  slope and aspect, plus 15% diffuse light. Texture: the cell's fine fractal
  structure, scaled per class, and 1% sensor noise.
* Clouds: a smooth fractal deck thresholded to the observation's cover (thick
  core, thin margin, optional cirrus sheet); shadows are the thick clouds cast
  away from the sun by ``height * tan(zenith)``. Cloud mask codes: 0 clear,
  1 thick, 2 thin, 3 shadow. L2A keeps clouds (as Sen2Cor does).
* L1C = (path radiance + transmittance x surface) under the cloud, plus the
  cloud itself. Path radiance: Rayleigh (~ lambda^-4) and aerosol (~ lambda^-1.3)
  terms, so it is strongest in B01/B02; B09 is attenuated by water vapour; B10
  (1375 nm) sees almost no surface, only cirrus and high cloud tops.
"""
from __future__ import annotations

import math

import numpy as np

from copgen_jax.datasets.synthetic import landscape as ls
from copgen_jax.datasets.synthetic.geometry import fractal, stream
from copgen_jax.datasets.synthetic.observation import Conditions

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
WAVELENGTH_UM = np.array([0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945,
                          1.375, 1.610, 2.190])
SWIR = WAVELENGTH_UM > 1.5
CIRRUS = BANDS.index("B10")
VAPOUR = BANDS.index("B09")

# (green, dormant) surface spectra in DN for the 13 bands above.
_SPECTRA = {
    ls.WATER: ([450, 480, 420, 260, 210, 150, 130, 120, 100, 60, 20, 40, 30],) * 2,
    ls.TREES: ([240, 300, 560, 290, 820, 2300, 2900, 3300, 3400, 1200, 900, 1500, 700],
               [280, 380, 560, 520, 900, 1500, 1800, 2100, 2200, 800, 900, 1900, 1100]),
    ls.FLOODED: ([330, 400, 650, 420, 950, 1700, 2000, 2200, 2200, 700, 400, 900, 400],
                 [350, 420, 560, 500, 700, 900, 1000, 1100, 1100, 450, 300, 800, 450]),
    ls.CROPS: ([300, 380, 800, 380, 1150, 2900, 3600, 4100, 4200, 1400, 1100, 2000, 950],
               [700, 900, 1250, 1550, 1750, 1950, 2100, 2250, 2350, 900, 1500, 3000, 2400]),
    ls.BUILT: ([1000, 1100, 1250, 1350, 1450, 1550, 1650, 1750, 1800, 700, 1000, 2100, 1850],) * 2,
    ls.BARE: ([1200, 1500, 2100, 2800, 3100, 3300, 3400, 3550, 3650, 1400, 1800, 4300, 3600],) * 2,
    ls.SNOW: ([9000, 9200, 9000, 8800, 8600, 8300, 8000, 7700, 7400, 3500, 300, 500, 400],) * 2,
    ls.RANGE: ([350, 450, 800, 750, 1300, 2300, 2700, 2900, 3000, 1000, 1000, 2600, 1700],
               [600, 800, 1150, 1450, 1750, 2100, 2300, 2450, 2550, 900, 1300, 3300, 2600]),
}
_TEXTURE = {ls.WATER: 0.03, ls.TREES: 0.12, ls.FLOODED: 0.08, ls.CROPS: 0.05, ls.BUILT: 0.25,
            ls.BARE: 0.08, ls.SNOW: 0.04, ls.RANGE: 0.10}
_SOILS = (ls.CROPS, ls.BARE, ls.RANGE, ls.FLOODED)
_TURBID = np.array([100, 150, 250, 200, 120, 60, 40, 30, 20, 10, 0, 5, 0], np.float32)
_CLOUD = np.array([7200, 7400, 7500, 7600, 7600, 7600, 7500, 7500, 7400, 4200, 2800, 5200, 3600], np.float32)
MASK_CLEAR, MASK_THICK, MASK_THIN, MASK_SHADOW = 0, 1, 2, 3


def _lut(table: dict, column: int | None = None) -> np.ndarray:
    """Class-code lookup table: (13, 256) of spectra, or (256,) of scalars."""
    rows = {c: np.asarray(v if column is None else v[column], np.float32) for c, v in table.items()}
    width = np.shape(next(iter(rows.values())))
    lut = np.zeros(width + (256,), np.float32)
    for code, row in rows.items():
        lut[..., code] = row
    return lut


GREEN, DORMANT, TEXTURE = _lut(_SPECTRA, 0), _lut(_SPECTRA, 1), _lut(_TEXTURE)
_WET_DARKENING = np.where(SWIR, 0.45, 0.25).astype(np.float32)


def greenness(land: ls.Landscape, cond: Conditions, moisture: np.ndarray) -> np.ndarray:
    """0 (dormant) .. 1 (green) per pixel for the observation's date."""
    s = cond.season
    trees = land.evergreen + (1.0 - land.evergreen) * s
    # Each crop parcel has its own sowing date: +-60 days around the season's peak.
    offset = (land.parcel - 0.5) * 120.0 + (196 if land.lat >= 0 else 14)
    days = (cond.doy - offset + 182.5) % 365.0 - 182.5
    crops = np.exp(-0.5 * (days / 45.0) ** 2) * (0.3 + 0.7 * s)
    grass = s * np.clip(moisture / 0.5, 0.2, 1.0)
    g = np.full(land.landcover.shape, s, np.float32)
    for code, value in ((ls.TREES, trees), (ls.CROPS, crops), (ls.RANGE, grass)):
        mask = land.landcover == code
        g[mask] = value[mask] if np.ndim(value) else value
    return g


def surface(land: ls.Landscape, cond: Conditions, rng: np.random.Generator) -> np.ndarray:
    """Clear-sky surface reflectance (13, H, W) in DN, before clouds."""
    lc = land.landcover
    moisture = np.clip(land.moisture + cond.moisture_anomaly, 0.0, 1.0)
    g = greenness(land, cond, moisture)
    wet = np.where(np.isin(lc, _SOILS), moisture, 0.0).astype(np.float32)
    turbid = ((lc == ls.WATER) * np.float32(cond.turbidity)).astype(np.float32)
    # Seasonal snow: the winter snow line drops by up to 2.5 km at mid latitudes.
    drop = np.interp(abs(land.lat), [0, 25, 40, 60, 90], [0, 0, 1800, 2500, 2500]) * cond.winter
    cover = np.clip((land.elevation - (land.snowline - drop) + 100.0 * land.texture) / 200.0, 0.0, 1.0)
    cover *= (lc != ls.WATER) * np.where(lc == ls.TREES, np.float32(0.6), np.float32(1.0))
    gain = (1.0 + TEXTURE[lc] * land.texture + 0.01 * rng.standard_normal(lc.shape, dtype=np.float32))
    gain *= illumination(land, cond)
    out = np.empty((len(BANDS),) + lc.shape, np.float32)
    for b in range(len(BANDS)):
        dormant = DORMANT[b][lc]
        rho = dormant + g * (GREEN[b][lc] - dormant)
        rho *= 1.0 - _WET_DARKENING[b] * wet
        rho += turbid * _TURBID[b]
        rho += cover * (GREEN[b, ls.SNOW] - rho)
        out[b] = rho * gain
    return out


def illumination(land: ls.Landscape, cond: Conditions) -> np.ndarray:
    """Lambertian terrain factor with 15% diffuse light; 1 on flat ground."""
    cz = math.cos(cond.sun_zenith)
    cos_i = cz * np.cos(land.slope) + math.sin(cond.sun_zenith) * np.sin(land.slope) * np.cos(
        cond.sun_azimuth - land.aspect)
    direct = np.clip(cos_i / cz, 0.0, 1.6)
    flat = land.landcover == ls.WATER
    return np.where(flat, 1.0, 0.15 + 0.85 * direct).astype(np.float32)


def clouds(land: ls.Landscape, cond: Conditions, rng: np.random.Generator):
    """(mask codes uint8, cloud opacity 0..1) on the 10 m grid."""
    n = land.landcover.shape[0]
    mask = np.zeros((n, n), np.uint8)
    alpha = np.zeros((n, n), np.float32)
    deck = 0.85 * fractal(rng, n, 3.6) + 0.15 * fractal(rng, n, 2.4)
    if cond.cloud_cover > 0:
        t_thin = np.quantile(deck, 1.0 - cond.cloud_cover)
        t_thick = np.quantile(deck, 1.0 - 0.65 * cond.cloud_cover)
        thick = deck > t_thick
        thin = (deck > t_thin) & ~thick
        alpha = np.where(thick, np.clip(0.85 + 0.15 * (deck - t_thick), 0.85, 1.0),
                         np.where(thin, 0.15 + 0.35 * (deck - t_thin) / max(t_thick - t_thin, 1e-6), 0.0))
    else:
        thick = thin = np.zeros((n, n), bool)
    if cond.cirrus:
        sheet = fractal(rng, n, 3.8)
        cirrus = (sheet > np.quantile(sheet, 1.0 - rng.uniform(0.1, 0.5))) & ~thick
        alpha = np.where(cirrus & ~thin, np.maximum(alpha, 0.2), alpha)
        thin |= cirrus
    # Shadows fall away from the sun, height * tan(zenith) metres from the cloud.
    # The deck is periodic (spectral synthesis), so rolling it brings in the
    # shadows of the clouds just outside the cell.
    reach = cond.cloud_height_m * math.tan(cond.sun_zenith) / 10.0
    rows = int(round(math.cos(cond.sun_azimuth) * reach))
    cols = int(round(-math.sin(cond.sun_azimuth) * reach))
    shadow = np.roll(thick, (rows, cols), axis=(0, 1)) & ~thick & ~thin
    mask[shadow], mask[thin], mask[thick] = MASK_SHADOW, MASK_THIN, MASK_THICK
    return mask, alpha.astype(np.float32)


def atmosphere(cond: Conditions, elevation: np.ndarray):
    """(path radiance in DN (13,), transmittance (13,), B10 transmittance (H, W))."""
    lam = WAVELENGTH_UM
    mu = math.cos(cond.sun_zenith)
    tau = 0.0088 * lam ** -4.05 + cond.aod * (0.55 / lam) ** 1.3
    path = 1050.0 * (0.443 / lam) ** 4 + 1500.0 * cond.aod * (0.55 / lam) ** 1.3
    t = np.exp(-0.5 * tau * (1.0 / mu + 1.0))
    t[VAPOUR] *= cond.water_vapour_t
    path[CIRRUS] = 5.0
    t = t.astype(np.float32)
    # 1375 nm: water vapour hides the ground except on high terrain.
    t_cirrus = 0.01 + 0.04 * np.clip(elevation / 4000.0, 0.0, 1.0)
    return path.astype(np.float32), t, t_cirrus.astype(np.float32)


def render(seed: int, cell_id: str, observation: int, land: ls.Landscape, cond: Conditions):
    """{"l2a": (13, H, W), "l1c": (13, H, W), "mask": (H, W)} in DN / codes at 10 m."""
    rng = stream(seed, cell_id, "optical", observation)
    ground = surface(land, cond, rng)
    mask, alpha = clouds(land, cond, rng)
    shadow = mask == MASK_SHADOW
    shade = 0.25 + 0.25 * (0.443 / WAVELENGTH_UM) ** 2  # diffuse sky light is bluish
    deck = _CLOUD * np.float32(rng.uniform(0.75, 1.1))
    path, t, t_cirrus = atmosphere(cond, land.elevation)
    clear = 1.0 - alpha
    l1c = np.empty_like(ground)
    for b in range(len(BANDS)):
        g = ground[b]
        g[shadow] *= np.float32(shade[b])
        cloud = deck[b] * alpha
        l1c[b] = (path[b] + (t_cirrus if b == CIRRUS else t[b]) * g) * clear + cloud
        g *= clear
        g += cloud  # L2A keeps the clouds, as Sen2Cor does
    for a in (ground, l1c):
        np.clip(np.rint(a, out=a), 1, 16000, out=a)
    return {"l2a": ground, "l1c": l1c, "mask": mask}
