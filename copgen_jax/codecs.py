"""Codecs: the maths between a modality's physical units and the network's range.

Each codec maps physical values to the network's range (``encode``) and back
(``decode``); ``copgen_jax.modalities`` gives every modality one, with its shapes.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


class ModalityError(ValueError):
    """Bad input for a modality: wrong shape, band count, unknown name, NaNs."""


def _to_unit(x, lo, hi):
    return 2.0 * (x - lo) / (hi - lo) - 1.0


def _from_unit(y, lo, hi):
    return (y + 1.0) / 2.0 * (hi - lo) + lo


@dataclasses.dataclass(frozen=True)
class Reflectance:
    """Sentinel-2 digital numbers: ``x / 10000`` then ``2x - 1`` (no clipping)."""

    scale: float = 10000.0

    def encode(self, x, units=None):
        return 2.0 * (x / self.scale) - 1.0

    def decode(self, y, units=None):
        return (y + 1.0) / 2.0 * self.scale


@dataclasses.dataclass(frozen=True)
class LogPower:
    """S1 backscatter: linear power -> dB -> min-max over [min_db, max_db].

    Non-positive powers are nodata in RTC products; they map to ``min_positive``.
    ``units="db"`` takes / returns decibels instead of linear power.
    """

    min_positive: float = 2.6380407689430285e-06
    min_db: float = -55.787186
    max_db: float = 40.2258

    def encode(self, x, units=None):
        if units == "db":
            x = np.power(10.0, np.asarray(x, np.float64) / 10.0)
        x = np.where(x <= 0, self.min_positive, x)
        return _to_unit(10.0 * np.log10(x), self.min_db, self.max_db)

    def decode(self, y, units=None):
        db = _from_unit(y, self.min_db, self.max_db)
        return db if units == "db" else np.power(10.0, db / 10.0)


@dataclasses.dataclass(frozen=True)
class Elevation:
    """DEM metres: ``log1p`` then min-max, as the reference does.

    The reference clamps elevations <= 0 to ``min_positive`` and so loses
    everything at or below sea level. ``signed=True`` (an option, off for
    compatibility with released weights) uses ``sign(x) log1p(|x|)`` over
    [-log1p(500), log1p(8849)] so the Dead Sea and polders survive.
    """

    min_positive: float = 5.899129519093549e-06
    lo: float = 0.000006
    hi: float = 9.088
    signed: bool = False
    signed_lo: float = -math.log1p(500.0)

    def encode(self, x, units=None):
        if self.signed:
            return _to_unit(np.sign(x) * np.log1p(np.abs(x)), self.signed_lo, self.hi)
        x = np.where(x <= 0, self.min_positive, x)
        return _to_unit(np.log1p(x), self.lo, self.hi)

    def decode(self, y, units=None):
        if self.signed:
            v = _from_unit(y, self.signed_lo, self.hi)
            return np.sign(v) * np.expm1(np.abs(v))
        return np.expm1(_from_unit(y, self.lo, self.hi))


@dataclasses.dataclass(frozen=True)
class OneHot:
    """Class codes -> one-hot over ``codes`` -> {-1, 1}; decode = argmax -> code.

    Unlike the reference, a code outside the table is an error, not class 0.
    """

    codes: tuple[int, ...]
    class_names: tuple[str, ...]
    colors: tuple[str, ...] = ()  # one "#rrggbb" per class for previews (empty: a generic palette)

    @property
    def num_classes(self):
        return len(self.codes)

    def index_of(self, codes):
        codes = np.asarray(codes)
        lookup = np.full(max(self.codes) + 1, -1, np.int64)
        lookup[list(self.codes)] = np.arange(self.num_classes)
        valid = (codes >= 0) & (codes <= max(self.codes)) & (codes == np.round(codes))
        idx = np.where(valid, lookup[np.clip(codes, 0, max(self.codes)).astype(np.int64)], -1)
        if (idx < 0).any():
            bad = [int(c) if c == np.round(c) else float(c) for c in np.unique(codes[idx < 0])[:10]]
            raise ModalityError(f"class codes {bad} are not in the table {list(self.codes)}")
        return idx

    def encode(self, x, units=None):
        # (..., 1, H, W) codes -> (..., K, H, W)
        idx = self.index_of(np.asarray(x)[..., 0, :, :])
        onehot = np.moveaxis(np.eye(self.num_classes, dtype=np.float32)[idx], -1, -3)
        return 2.0 * onehot - 1.0

    def decode(self, y, units=None):
        idx = np.argmax(np.asarray(y), axis=-3)
        return np.asarray(self.codes, np.int64)[idx][..., None, :, :]


@dataclasses.dataclass(frozen=True)
class LatLon:
    """(lat, lon) degrees -> unit vector (cos lat cos lon, cos lat sin lon, sin lat)."""

    def encode(self, x, units=None):
        lat, lon = np.radians(x[..., 0]), np.radians(x[..., 1])
        return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)

    def decode(self, y, units=None):
        y = np.asarray(y, np.float64)
        # Generated vectors are not exactly unit length: project first.
        y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
        lat = np.degrees(np.arcsin(np.clip(y[..., 2], -1, 1)))
        lon = np.degrees(np.arctan2(y[..., 1], y[..., 0]))
        return np.stack([lat, lon], -1)


@dataclasses.dataclass(frozen=True)
class Date:
    """Day -> (sin 2pi doy/D, cos 2pi doy/D, year scaled to [-1, 1] over 1950..2050).

    ``doy`` is 1-based (1 January = 1), D = 365 or 366.
    """

    min_year: int = 1950
    max_year: int = 2050

    def encode(self, x, units=None):
        day = np.asarray(x, "datetime64[D]")
        year = day.astype("datetime64[Y]").astype(np.int64) + 1970
        doy = (day - day.astype("datetime64[Y]")).astype(np.int64) + 1
        days = _days_in_year(year)
        angle = 2 * np.pi * doy / days
        scaled = _to_unit(year.astype(np.float64), self.min_year, self.max_year)
        return np.stack([np.sin(angle), np.cos(angle), scaled], -1)

    def decode(self, y, units=None):
        y = np.asarray(y, np.float64)
        year = np.round(_from_unit(y[..., 2], self.min_year, self.max_year)).astype(np.int64)
        days = _days_in_year(year)
        angle = np.mod(np.arctan2(y[..., 0], y[..., 1]), 2 * np.pi)
        doy = np.mod(np.round(angle * days / (2 * np.pi)).astype(np.int64), days)
        doy = np.where(doy == 0, days, doy)
        start = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]")
        return start + (doy - 1).astype("timedelta64[D]")


def _days_in_year(year):
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    return np.where(leap, 366, 365)
