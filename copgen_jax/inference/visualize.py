"""Previews of modalities and a PNG sheet of a generation: conditions | samples | mean | std.

How a modality is drawn follows its codec (never its name):
  reflectance   the registry's ``preview`` bands as red, green, blue (S2 true colour from
                B04/B03/B02), else the first band in grey; reflectance 0-0.3 (0-3000 DN)
                to black-white, the usual Sentinel-2 true-colour rendering, so land reads
                the same in every panel and clouds saturate white
  S1 power      false colour: VV dB, VH dB, VV/VH ratio dB
  elevation     hillshade (sun from the north-west, 45 deg) over a terrain colour ramp
  class maps    the class table's legend colours (``OneHot.colors``)
  scalars       text
Other continuous values get a 2-98 % percentile stretch. The stretch of a row is shared by its
conditions and samples, so they compare directly;
the uncertainty column is the per-pixel std over samples (averaged over bands; for class
maps, 1 - agreement with the most frequent class).
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib import colormaps, colors as mcolors
from matplotlib.figure import Figure

from copgen_jax.codecs import Date, Elevation, LatLon, LogPower, Reflectance
from copgen_jax import storage
from copgen_jax.modalities import CATEGORICAL, Modality


def _stretch(x, lo=None, hi=None):
    """Per-channel 2-98 % stretch of (C, H, W) into [0, 1]; returns (image HWC, lo, hi)."""
    x = np.asarray(x, np.float64)
    if lo is None:
        lo, hi = np.percentile(x, 2, axis=(1, 2)), np.percentile(x, 98, axis=(1, 2))
    scaled = (x - np.reshape(lo, (-1, 1, 1))) / np.maximum(np.reshape(hi, (-1, 1, 1)) - np.reshape(lo, (-1, 1, 1)), 1e-9)
    img = np.clip(np.moveaxis(scaled, 0, -1), 0, 1)
    return (np.repeat(img, 3, -1) if img.shape[-1] == 1 else img), lo, hi


TRUE_COLOUR_MAX = 0.3  # reflectance shown as white: land stays readable beside clouds


def _reflectance_channels(m: Modality, x, unit=None):
    bands = m.preview or m.bands[:1]
    return np.stack([x[m.bands.index(b)] for b in bands])


def _s1_channels(m: Modality, x, unit=None):
    db = x if unit == "db" else 10.0 * np.log10(np.maximum(x, 1e-10))
    return np.stack([db[0], db[-1], db[0] - db[-1]])


def hillshade(dem, gsd: float, azimuth: float = 315.0, altitude: float = 45.0) -> np.ndarray:
    """Lambertian hillshade in [0, 1] of a (H, W) elevation grid in metres."""
    dy, dx = np.gradient(np.asarray(dem, np.float64), gsd)
    slope = np.arctan(np.hypot(dx, dy))
    aspect = np.arctan2(-dx, dy)
    az, alt = np.radians(360.0 - azimuth + 90.0), np.radians(altitude)
    shade = np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect)
    return np.clip(shade, 0, 1)


def palette(m: Modality) -> np.ndarray:
    """(K, 3) colours of a class table: its legend, else a generic qualitative map."""
    if m.codec.colors:
        return np.array([mcolors.to_rgb(c) for c in m.codec.colors])
    return np.array(colormaps["tab10"].colors[: m.num_classes])


def render(m: Modality, x, stretch=None, unit=None) -> tuple[np.ndarray, tuple]:
    """(H, W, 3) image in [0, 1] of one physical-unit array; and the stretch used (reuse it)."""
    x = np.asarray(x)
    if m.kind == CATEGORICAL:
        return palette(m)[m.codec.index_of(x[0])], None
    if isinstance(m.codec, Elevation):
        lo, hi = stretch or (float(np.min(x)), float(np.max(x)) + 1e-6)
        ramp = colormaps["terrain"](np.clip((x[0] - lo) / (hi - lo), 0, 1) * 0.8 + 0.2)[..., :3]
        return ramp * (0.35 + 0.65 * hillshade(x[0], m.gsd)[..., None]), (lo, hi)
    channels = {LogPower: _s1_channels, Reflectance: _reflectance_channels}.get(type(m.codec))
    c = channels(m, x, unit) if channels else x[:1]
    if stretch is None and isinstance(m.codec, Reflectance):
        stretch = (np.zeros(len(c)), np.full(len(c), TRUE_COLOUR_MAX * m.codec.scale))
    img, lo, hi = _stretch(c, *(stretch or (None, None)))
    return img, (lo, hi)


def joint_stretch(m: Modality, arrays, unit=None):
    """One stretch for several arrays of ``m`` (a row of the sheet)."""
    if m.kind == CATEGORICAL:
        return None
    stack = np.concatenate([np.asarray(a) for a in arrays], axis=-1)
    return render(m, stack, unit=unit)[1]


def describe(m: Modality, value) -> str:
    """Scalars as text: degrees for lat/lon, ISO day for dates."""
    if isinstance(m.codec, LatLon):
        lat, lon = np.asarray(value, np.float64)
        return f"{abs(lat):.2f}°{'N' if lat >= 0 else 'S'} {abs(lon):.2f}°{'E' if lon >= 0 else 'W'}"
    if isinstance(m.codec, Date):
        return str(np.datetime64(value, "D"))
    return np.array2string(np.asarray(value), precision=3)


def uncertainty_map(m: Modality, stats: dict) -> np.ndarray | None:
    """(H, W) per-pixel uncertainty of one input: mean std over bands, or class disagreement."""
    if "uncertainty" in stats:
        return np.asarray(stats["uncertainty"])[0]
    if "std" in stats:
        return np.asarray(stats["std"]).mean(0)
    return None


def _scalar_lines(generation, item):
    reg = generation.registry
    lines = [f"given {n}: {describe(reg[n], v[item])}" for n, v in generation.conditions.items() if reg[n].is_scalar]
    for n, v in generation.samples.items():
        if reg[n].is_scalar:
            shown = ", ".join(describe(reg[n], s) for s in v[item][:4])
            lines.append(f"generated {n}: {shown}{' ...' if len(v[item]) > 4 else ''}")
    return lines


def sheet(generation, path, item: int = 0, max_samples: int = 4, truth: dict | None = None,
          cell: float = 2.2) -> str:
    """Write the PNG sheet of input ``item``: one row per generated spatial modality.

    ``truth`` (name -> physical array of that input) adds a reference column before the samples.
    """
    reg = generation.registry
    truth = {n: v for n, v in (truth or {}).items() if n in generation.samples and not reg[n].is_scalar}
    units = generation.settings.get("units", {})
    given = [n for n in generation.conditions if not reg[n].is_scalar]
    rows = [n for n in generation.samples if not reg[n].is_scalar]
    n_show = min(max_samples, generation.settings["n_samples"])
    has_stats = bool(generation.stats)
    cols = len(given) + bool(truth) + n_show + (2 if has_stats else 0)
    lines = _scalar_lines(generation, item)
    fig = Figure(figsize=(cell * max(cols, 1), cell * max(len(rows), 1) + 0.3 * len(lines) + 0.4))
    axes = fig.subplots(max(len(rows), 1), max(cols, 1), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, name in enumerate(rows):
        m, samples = reg[name], generation.samples[name][item]
        stretch = joint_stretch(m, list(samples[:n_show]) + ([truth[name]] if name in truth else []), units.get(name))
        col = 0
        for g in given:  # conditions, on the first row only
            if r == 0:
                gm = reg[g]
                img, _ = render(gm, generation.conditions[g][item], unit=units.get(g))
                axes[0, col].imshow(img, interpolation="nearest")
                axes[0, col].set_title(f"given\n{g}", fontsize=7)
            col += 1
        if truth:
            if name in truth:
                axes[r, col].imshow(render(m, truth[name], stretch, units.get(name))[0], interpolation="nearest")
                axes[r, col].set_title(f"truth\n{name}", fontsize=7)
            col += 1
        for j in range(n_show):
            axes[r, col].imshow(render(m, samples[j], stretch, units.get(name))[0], interpolation="nearest")
            axes[r, col].set_title(f"sample {j}\n{name}", fontsize=7)
            col += 1
        if has_stats:
            st = {k: v[item] for k, v in generation.stats[name].items()}
            centre = st.get("mean", st.get("mode"))
            axes[r, col].imshow(render(m, centre, stretch, units.get(name))[0], interpolation="nearest")
            axes[r, col].set_title("mean" if "mean" in st else "most frequent", fontsize=7)
            unc = uncertainty_map(m, st)
            im = axes[r, col + 1].imshow(unc, cmap="magma", interpolation="nearest")
            axes[r, col + 1].set_title("std (uncertainty)" if "std" in st else "1 - agreement", fontsize=7)
            fig.colorbar(im, ax=axes[r, col + 1], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    if lines:
        fig.suptitle("\n".join(lines), fontsize=8)
    fig.tight_layout()
    with storage.local_file(path) as local:  # makes the local folder
        fig.savefig(local, dpi=100)
    return os.fspath(path)


def save_sheet(path, generation, item: int = 0, truth: dict | None = None, max_samples: int = 4) -> str:
    """``sheet`` with the path first."""
    return sheet(generation, path, item=item, max_samples=max_samples, truth=truth)
