"""The modality registry: the one place that knows what each modality is.

Every other module asks the registry for shapes, token counts, band names,
normalisation and file naming; no modality name is spelled out elsewhere.

Physical units (what users give and get back):
  * S2 L1C / L2A: digital numbers (reflectance x 10000), shape (bands, H, W).
  * S1 RTC: linear backscatter power (or dB with ``units="db"``), (2, H, W).
  * DEM: metres above sea level, (1, H, W).
  * Land cover / cloud mask: raw class codes, (1, H, W).
  * Lat/lon: degrees, shape (2,) as (lat, lon).
  * Date: ``numpy.datetime64`` day(s), shape () or (...,).

Network units: image modalities (C, H, W) in [-1, 1]; categorical ones one-hot
(K, H, W) mapped to {-1, 1}; scalars a 3-vector.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from copgen_jax.codecs import Date, Elevation, LatLon, LogPower, ModalityError, OneHot, Reflectance


# ---------------------------------------------------------------------------
# The modality record.
# ---------------------------------------------------------------------------

IMAGE, CATEGORICAL, SCALAR = "image", "categorical", "scalar"


@dataclasses.dataclass(frozen=True)
class Modality:
    """One modality: what it is, how big, how it is tokenised and normalised."""

    name: str
    kind: str  # IMAGE | CATEGORICAL | SCALAR
    bands: tuple[str, ...]  # physical channel order (scalars: components)
    codec: Any
    size: int = 1  # native pixels per side (scalars: 1)
    gsd: float | None = None  # metres per pixel
    product: str | None = None  # Major TOM product the bands come from
    latent_channels: int = 8
    downsample: int = 8  # tokenizer spatial reduction
    patch: int = 2
    scale_factor: float = 1.0  # applied to tokenizer latents
    preview: tuple[str, ...] = ()  # bands shown as red, green, blue in previews (empty: the first band, grey)

    # -- shapes ------------------------------------------------------------
    @property
    def is_scalar(self) -> bool:
        return self.kind == SCALAR

    @property
    def num_classes(self) -> int:
        return self.codec.num_classes if self.kind == CATEGORICAL else 0

    @property
    def physical_shape(self) -> tuple[int, ...]:
        """Shape in physical units, per sample."""
        if self.is_scalar:
            return (2,) if isinstance(self.codec, LatLon) else ()
        return (len(self.bands), self.size, self.size)

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """Shape in the network's range (what tokenizers eat), per sample."""
        if self.is_scalar:
            return (3,)
        channels = self.num_classes or len(self.bands)
        return (channels, self.size, self.size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the backbone sees; scalars are (1, 1, 3)."""
        if self.is_scalar:
            return (1, 1, 3)
        side = self.size // self.downsample
        return (self.latent_channels, side, side)

    @property
    def grid(self) -> tuple[int, int]:
        c, h, w = self.latent_shape
        return (h // self.patch, w // self.patch) if not self.is_scalar else (1, 3)

    @property
    def num_tokens(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def patch_dim(self) -> int:
        """Values one token carries: patch**2 * latent channels."""
        return self.patch * self.patch * self.latent_shape[0]

    # -- normalisation -------------------------------------------------------
    def normalize(self, x, units=None) -> np.ndarray:
        """Physical units -> network range; validates first."""
        x = self.validate(x, units=units)
        try:
            return np.asarray(self.codec.encode(x, units=units), np.float32)
        except ModalityError as e:
            raise ModalityError(f"{self.name}: {e}") from None

    def denormalize(self, y, units=None) -> np.ndarray:
        """Network range -> physical units (inverse of ``normalize``)."""
        y = np.asarray(y)
        expect = self.pixel_shape
        if y.shape[y.ndim - len(expect):] != expect:
            raise ModalityError(
                f"{self.name}: network-range array has shape {y.shape}, expected (..., {_fmt(expect)})")
        return self.codec.decode(y.astype(np.float64), units=units)

    def validate(self, x, units=None) -> np.ndarray:
        """Check a physical-unit array; returns it as float64 (dates: datetime64)."""
        if isinstance(self.codec, Date):
            try:
                return np.asarray(x, "datetime64[D]")
            except (TypeError, ValueError) as e:
                raise ModalityError(f"{self.name}: cannot read {x!r} as a date (use YYYY-MM-DD)") from e
        x = np.asarray(x)
        expect = self.physical_shape
        tail = x.shape[x.ndim - len(expect):] if x.ndim >= len(expect) else x.shape
        if x.ndim < len(expect) or tail != expect:
            hint = ""
            if len(expect) == 3 and x.ndim >= 3 and x.shape[-3] != expect[0]:
                hint = f" ({x.shape[-3]} bands given, {expect[0]} expected: {', '.join(self.bands)})"
            elif len(expect) == 3 and x.ndim >= 2 and x.shape[-2:] != expect[1:]:
                hint = f" ({x.shape[-2]}x{x.shape[-1]} px given, {expect[1]}x{expect[2]} expected at {self.gsd} m)"
            raise ModalityError(
                f"{self.name}: array has shape {x.shape}, expected (..., {_fmt(expect)}){hint}")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise ModalityError(
                f"{self.name}: {bad} non-finite values (NaN/inf); fill or mask them before normalising")
        return x


def _fmt(shape):
    return ", ".join(str(s) for s in shape)


# ---------------------------------------------------------------------------
# The official table (SPEC §2), and the registry built from it.
# ---------------------------------------------------------------------------

LULC_CLASSES = OneHot(
    codes=(0, 1, 2, 4, 5, 7, 8, 9, 10, 11),
    class_names=("No data", "Water", "Trees", "Flooded vegetation", "Crops", "Built-up",
                 "Bare ground", "Snow/Ice", "Clouds", "Rangeland"),
    # The product's own legend colours (Esri / Impact Observatory 10-class land cover).
    colors=("#000000", "#419bdf", "#397d49", "#7a87c6", "#e49635", "#c4281b",
            "#a59b8f", "#a8ebff", "#616161", "#e3e2c3"))
CLOUD_CLASSES = OneHot(codes=(0, 1, 2, 3), class_names=("Clear", "Thick cloud", "Thin cloud", "Shadow"),
                       colors=("#3a7d44", "#ffffff", "#b3cde3", "#1b1b1b"))


def _s2(name, bands, size, gsd, product, scale_factor, preview=()):
    return Modality(name, IMAGE, bands, Reflectance(), size, gsd, product, scale_factor=scale_factor,
                    preview=preview)


OFFICIAL: tuple[Modality, ...] = (
    Modality("3d_cartesian_lat_lon", SCALAR, ("x", "y", "z"), LatLon(), latent_channels=1,
             downsample=1, patch=1),
    Modality("DEM_DEM", IMAGE, ("DEM",), Elevation(), 64, 30.0, "Core-DEM", scale_factor=0.404247),
    Modality("LULC_LULC", CATEGORICAL, ("LULC",), LULC_CLASSES, 192, 10.0, "Core-LULC",
             scale_factor=0.464794),
    Modality("S1RTC_vh_vv", IMAGE, ("vv", "vh"), LogPower(), 192, 10.0, "Core-S1RTC",
             scale_factor=0.633804),
    _s2("S2L1C_B01_B09_B10", ("B01", "B09", "B10"), 32, 60.0, "Core-S2L1C", 0.565812),
    _s2("S2L1C_B02_B03_B04_B08", ("B04", "B03", "B02", "B08"), 192, 10.0, "Core-S2L1C", 0.772514,
        ("B04", "B03", "B02")),
    _s2("S2L1C_B05_B06_B07_B11_B12_B8A", ("B05", "B06", "B07", "B8A", "B11", "B12"), 96, 20.0,
        "Core-S2L1C", 0.765817, ("B12", "B8A", "B05")),
    Modality("S2L1C_cloud_mask", CATEGORICAL, ("cloud_mask",), CLOUD_CLASSES, 192, 10.0, "Core-S2L1C",
             scale_factor=0.557045),
    _s2("S2L2A_B01_B09", ("B01", "B09"), 32, 60.0, "Core-S2L2A", 0.571367),
    _s2("S2L2A_B02_B03_B04_B08", ("B04", "B03", "B02", "B08"), 192, 10.0, "Core-S2L2A", 0.853416,
        ("B04", "B03", "B02")),
    _s2("S2L2A_B05_B06_B07_B11_B12_B8A", ("B05", "B06", "B07", "B8A", "B11", "B12"), 96, 20.0,
        "Core-S2L2A", 0.567267, ("B12", "B8A", "B05")),
    Modality("mean_timestamps", SCALAR, ("sin_doy", "cos_doy", "year"), Date(), latent_channels=1,
             downsample=1, patch=1),
)


class Registry(Sequence[Modality]):
    """An ordered set of modalities, sorted by name (this fixes token order)."""

    def __init__(self, modalities: Iterable[Modality]):
        self._mods = tuple(sorted(modalities, key=lambda m: m.name))
        self._by_name = {m.name: m for m in self._mods}
        if len(self._by_name) != len(self._mods):
            raise ModalityError("duplicate modality names in registry")

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._by_name:
                raise ModalityError(f"unknown modality {key!r}; known: {', '.join(self.names)}")
            return self._by_name[key]
        return self._mods[key]

    def __len__(self):
        return len(self._mods)

    def __contains__(self, key):
        return key in self._by_name if isinstance(key, str) else key in self._mods

    def __repr__(self):
        return f"Registry({', '.join(self.names)})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self._mods)

    def index(self, name: str) -> int:
        return self.names.index(self[name].name)

    @property
    def num_tokens(self) -> int:
        """Patch tokens plus one time token per modality."""
        return sum(m.num_tokens for m in self._mods) + len(self._mods)

    @property
    def spatial(self) -> tuple[Modality, ...]:
        return tuple(m for m in self._mods if not m.is_scalar)

    def subset(self, names: Iterable[str]) -> "Registry":
        return Registry(self[n] for n in names)

    def latent_shapes(self) -> dict[str, tuple[int, int, int]]:
        return {m.name: m.latent_shape for m in self._mods}


TOKENISATION = ("downsample", "patch", "latent_channels")  # what ``per_modality`` may change


def build_registry(names: Sequence[str] | None = None, pixel_scale: int = 1,
                   downsample: int = 8, patch: int | None = None,
                   latent_channels: int | None = None, signed_dem: bool = False,
                   per_modality: dict[str, dict[str, int]] | None = None) -> Registry:
    """The official registry, or a smaller variant for tests and the demo.

    ``pixel_scale`` divides every native size (192 -> 48 for 4); ``downsample``
    is the tokenizer's reduction; ``patch`` overrides the image patch size;
    ``per_modality`` overrides any of ``downsample``, ``patch`` and
    ``latent_channels`` for single image modalities (a small DEM kept at a finer
    latent grid than the rest). Sizes must stay divisible so every latent grid is whole.
    """
    official = Registry(OFFICIAL)
    chosen = official if names is None else official.subset(names)
    per_modality = {k: dict(v) for k, v in (per_modality or {}).items()}
    for name, own in per_modality.items():
        if name not in chosen or chosen[name].is_scalar:
            raise ModalityError(f"modalities.per_modality names {name!r}, which is not an image modality of "
                                f"this registry ({', '.join(m.name for m in chosen.spatial)})")
        if set(own) - set(TOKENISATION):
            raise ModalityError(f"modalities.per_modality.{name} sets {sorted(set(own) - set(TOKENISATION))}; "
                                f"only {', '.join(TOKENISATION)} can differ per modality")
    out = []
    for m in chosen:
        if m.is_scalar:
            out.append(m)
            continue
        own = {"downsample": downsample, "patch": patch or m.patch,
               "latent_channels": latent_channels or m.latent_channels, **per_modality.get(m.name, {})}
        size, d, p = m.size // pixel_scale, own["downsample"], own["patch"]
        if m.size % pixel_scale or size % d or (size // d) % p:
            raise ModalityError(
                f"{m.name}: native {m.size} px / pixel_scale {pixel_scale} / downsample {d} "
                f"/ patch {p} does not give a whole token grid; choose divisors of {m.size}")
        codec = dataclasses.replace(m.codec, signed=True) if isinstance(m.codec, Elevation) and signed_dem else m.codec
        out.append(dataclasses.replace(m, size=size, codec=codec, gsd=m.gsd * pixel_scale if m.gsd else m.gsd,
                                       **own))
    return Registry(out)


def registry_from_config(cfg) -> Registry:
    """Build the registry a config's ``modalities`` block asks for."""
    mc = cfg.modalities
    return build_registry(
        names=list(mc.names) if mc.names else None,
        pixel_scale=mc.pixel_scale, downsample=mc.downsample,
        patch=mc.patch or None, latent_channels=mc.latent_channels or None,
        signed_dem=mc.signed_dem, per_modality=mc.per_modality)
