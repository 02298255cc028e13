"""Sentinel-1 RTC over a synthetic cell: VV and VH backscatter (gamma0, linear power).

Per land-cover class a mean (VV, VH) in dB: calm water ~ -21 / -28 (wind
roughens it by up to +7 dB), forest ~ -7.5 / -13.5, built-up ~ 0 / -7 (double
bounce), bare soil ~ -15 / -24. Soil moisture brightens soils and crops,
growing crops gain volume scattering, wet spring snow goes dark. Terrain
correction is imperfect: slopes facing the sensor stay a few dB brighter. A
static texture (stronger in towns) and multiplicative gamma speckle with
4.4 equivalent looks finish the image.
"""
from __future__ import annotations

import numpy as np

from copgen_jax.datasets.synthetic import landscape as ls
from copgen_jax.datasets.synthetic.geometry import stream
from copgen_jax.datasets.synthetic.observation import Conditions
from copgen_jax.datasets.synthetic.optical import greenness

LOOKS = 4.4
# class: (VV dB, VH dB, dB per unit soil moisture, VV dB and VH dB gained when fully green)
_BACKSCATTER = {
    ls.WATER: (-21.0, -28.0, 0.0, 0.0, 0.0),
    ls.TREES: (-7.5, -13.5, 1.0, 0.0, 0.0),
    ls.FLOODED: (-6.0, -15.0, 0.0, 1.0, 1.0),
    ls.CROPS: (-13.0, -21.0, 4.0, 3.0, 6.0),
    ls.BUILT: (0.0, -7.0, 0.0, 0.0, 0.0),
    ls.BARE: (-15.0, -24.0, 6.0, 0.0, 0.0),
    ls.SNOW: (-13.0, -21.0, 0.0, 0.0, 0.0),
    ls.RANGE: (-11.0, -18.0, 3.0, 1.0, 2.0),
}
_TEXTURE_DB = {ls.BUILT: 3.0}


def _table(lc: np.ndarray, column: int) -> np.ndarray:
    lut = np.zeros(256, np.float32)
    for code, row in _BACKSCATTER.items():
        lut[code] = row[column]
    return lut[lc]


def backscatter_db(land: ls.Landscape, cond: Conditions) -> tuple[np.ndarray, np.ndarray]:
    """Mean (VV, VH) in dB before speckle."""
    lc = land.landcover
    moisture = np.clip(land.moisture + cond.moisture_anomaly, 0.0, 1.0)
    green = greenness(land, cond, moisture)
    wet = _table(lc, 2) * (moisture - 0.5)
    vv = _table(lc, 0) + wet + _table(lc, 3) * green
    vh = _table(lc, 1) + 0.5 * wet + _table(lc, 4) * green
    water = lc == ls.WATER
    vv = vv + water * cond.wind_db
    vh = vh + water * 0.5 * cond.wind_db
    if cond.season > 0.6:  # melting snow absorbs: wet snow is dark
        snow = lc == ls.SNOW
        vv, vh = vv - 7.0 * snow, vh - 5.0 * snow
    # Residual terrain effect: slopes facing the sensor (opposite the look direction).
    facing = np.sin(land.slope) * np.cos(land.aspect - (cond.look_azimuth + np.pi))
    texture = np.where(lc == ls.BUILT, _TEXTURE_DB[ls.BUILT], 0.8) * land.texture
    return vv + 5.0 * facing + texture, vh + 5.0 * facing + texture


def render(seed: int, cell_id: str, observation: int, land: ls.Landscape, cond: Conditions) -> dict:
    """{"vv": (H, W), "vh": (H, W)} linear power at 10 m."""
    rng = stream(seed, cell_id, "radar", observation)
    vv_db, vh_db = backscatter_db(land, cond)
    out = {}
    for name, db in (("vv", vv_db), ("vh", vh_db)):
        speckle = rng.gamma(LOOKS, 1.0 / LOOKS, size=db.shape)
        out[name] = (np.power(10.0, db / 10.0) * speckle).astype(np.float32)
    return out
