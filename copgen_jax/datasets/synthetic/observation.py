"""What changes from one observation of a cell to the next: date, sun, weather.

Observation ``k`` of a cell is acquired ``23 k`` days (give or take 4) after the
cell's first date, so 16 observations span a year and cross every season. Per
observation there are independent draws of cloud cover, aerosol load (haze),
water vapour, a soil-moisture anomaly (recent rain or drought), wind over water
and the Sentinel-1 orbit direction; S1 flies within 6 days of S2.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from copgen_jax.datasets.synthetic.geometry import stream

REVISIT_DAYS = 23
S2_LOCAL_TIME_H = 10.5  # descending node: 10:30 local solar time
MAX_SUN_ZENITH = math.radians(78.0)


@dataclasses.dataclass(frozen=True)
class Conditions:
    date: np.datetime64  # S2 sensing day
    s1_date: np.datetime64
    doy: int
    sun_zenith: float  # radians
    sun_azimuth: float  # radians clockwise from north
    season: float  # 0 (dormant) .. 1 (peak of the growing season)
    winter: float  # 0 .. 1, depth of winter (drives seasonal snow)
    cloud_cover: float  # fraction of the cell under cloud
    cirrus: bool
    cloud_height_m: float
    aod: float  # aerosol optical depth at 550 nm
    water_vapour_t: float  # two-way transmittance of the 945 nm band
    moisture_anomaly: float
    turbidity: float
    wind_db: float  # roughening of open water in VV
    look_azimuth: float  # S1 look direction, radians clockwise from north
    satellite: str  # "A" or "B"


def first_date(seed: int, cell_id: str) -> np.datetime64:
    rng = stream(seed, cell_id, "calendar")
    year = int(rng.integers(2017, 2023))
    return np.datetime64(f"{year}-01-01", "D") + np.timedelta64(int(rng.integers(0, 365)), "D")


def day_of_year(day: np.datetime64) -> int:
    return int((day - day.astype("datetime64[Y]")).astype(np.int64)) + 1


def sun_position(lat: float, doy: int) -> tuple[float, float]:
    """(zenith, azimuth from north) at the S2 overpass, radians."""
    phi = math.radians(lat)
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    hour = math.radians(15.0 * (S2_LOCAL_TIME_H - 12.0))
    cos_z = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour)
    zenith = min(math.acos(max(-1.0, min(1.0, cos_z))), MAX_SUN_ZENITH)
    from_south = math.atan2(math.sin(hour), math.cos(hour) * math.sin(phi) - math.tan(decl) * math.cos(phi))
    return zenith, (from_south + math.pi) % (2 * math.pi)


def seasonality(lat: float, doy: int) -> tuple[float, float]:
    """(season, winter): growing-season stage and winter depth, by hemisphere.

    Peaks in mid-July in the north and mid-January in the south; the tropics
    stay green with a weak cycle.
    """
    peak = 196 if lat >= 0 else 14
    cycle = 0.5 + 0.5 * math.cos(2 * math.pi * (doy - peak) / 365.0)
    amplitude = min(max((abs(lat) - 10.0) / 25.0, 0.0), 1.0)
    return 1.0 - amplitude * (1.0 - cycle), amplitude * (1.0 - cycle)


def make_conditions(seed: int, cell_id: str, observation: int, lat: float) -> Conditions:
    rng = stream(seed, cell_id, "weather", observation)
    date = first_date(seed, cell_id) + np.timedelta64(
        REVISIT_DAYS * observation + int(rng.integers(-4, 5)), "D")
    doy = day_of_year(date)
    zenith, azimuth = sun_position(lat, doy)
    season, winter = seasonality(lat, doy)
    clear = rng.random() < 0.55
    return Conditions(
        date=date, s1_date=date + np.timedelta64(int(rng.integers(-6, 7)), "D"), doy=doy,
        sun_zenith=zenith, sun_azimuth=azimuth, season=season, winter=winter,
        cloud_cover=0.0 if clear else float(rng.uniform(0.03, 0.6)),
        cirrus=bool(rng.random() < 0.2), cloud_height_m=float(rng.uniform(1000, 3000)),
        aod=float(np.clip(np.exp(rng.normal(math.log(0.12), 0.6)), 0.02, 1.0)),
        water_vapour_t=float(rng.uniform(0.35, 0.6)),
        moisture_anomaly=float(rng.normal(0.0, 0.15)), turbidity=float(rng.uniform(0, 1)),
        wind_db=float(rng.uniform(-3, 7)),
        look_azimuth=math.radians(78.0 if rng.random() < 0.5 else 282.0),
        satellite="A" if rng.random() < 0.5 else "B")
