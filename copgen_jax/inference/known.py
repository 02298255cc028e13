"""Region conditioning: a generated modality whose pixels are partly known (gap filling, inpainting).

``CopGen.generate(..., known={name: (pixels, mask)})``. The known part of a modality has to be
given to the sampler as latents, and a latent pixel summarises a ``m.downsample`` x
``m.downsample`` block of pixels, so:

* a latent pixel is known only when every pixel under it is known (``latent_mask``); the known
  pixels are encoded once, the unknown ones first filled with a neutral value (``fill``) so the
  encoder sees no NaN, and the sampler holds the known latent pixels (``samplers.sample``);
* after decoding, every known pixel is put back exactly (``paste``), so samples agree there
  bit for bit and their spread is 0. Pixels of a latent pixel that is only partly known are
  therefore generated, then pasted: near the gap's edge the generated part continues a latent
  that was itself generated, not encoded.

The mask comes in one of three spellings: a boolean (H, W) or (B, H, W) array (True = known;
a cloud mask ``cloudy`` is given as ``~cloudy``), a nodata value (a float: known where every band
differs from it and is finite), or None (known where every band is finite). Pixels may be a
GeoTIFF path; its own nodata / NaN pixels are then unknown too.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from copgen_jax.inference import geo
from copgen_jax.modalities import CATEGORICAL, Modality, ModalityError


@dataclasses.dataclass
class Known:
    """One partly known modality: physical pixels (B, C, H, W), unknown ones filled; mask (B, H, W)."""

    pixels: np.ndarray
    mask: np.ndarray
    raster: geo.Raster | None = None  # when read from a GeoTIFF (its footprint places the outputs)


def read(m: Modality, value) -> Known:
    """One ``known`` entry -> checked, filled ``Known`` with a batch axis."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ModalityError(f"known[{m.name}]: expected (pixels, mask), (pixels, nodata value) or "
                            f"(pixels, None), got {type(value).__name__}")
    if m.is_scalar:
        raise ModalityError(f"known[{m.name}]: a scalar modality is known whole or not at all; "
                            "pass it as a condition")
    pixels, spec = value
    raster = None
    if isinstance(pixels, (str, os.PathLike)):
        raster = geo.read_condition(pixels, m, nodata="keep")  # the file's nodata pixels read as NaN
        pixels = raster.data
    pixels = np.asarray(pixels, np.float64)
    if pixels.ndim == len(m.physical_shape):
        pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[1:] != m.physical_shape:
        raise ModalityError(f"known[{m.name}]: pixels have shape {pixels.shape}, expected "
                            f"{m.physical_shape} or (B, {', '.join(map(str, m.physical_shape))})")
    finite = np.isfinite(pixels).all(axis=1)
    mask = _mask(m, spec, pixels, finite)
    batch = max(len(pixels), len(mask))
    pixels = np.broadcast_to(pixels, (batch, *pixels.shape[1:]))
    finite, mask = (np.broadcast_to(a, (batch, *a.shape[1:])) for a in (finite, mask))
    if raster is not None:
        mask = mask & finite  # a file's NaN / nodata pixels are never known
    check(m, mask, finite)
    return Known(fill(m, pixels, mask), np.ascontiguousarray(mask), raster)


def _mask(m: Modality, spec, pixels, finite) -> np.ndarray:
    """The known-pixel mask (B, H, W) from a boolean array, a nodata value or None."""
    if spec is None:
        return finite
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, (bool, np.bool_)):
        return finite & (pixels != float(spec)).all(axis=1)
    mask = np.asarray(spec)
    if mask.dtype != bool:
        raise ModalityError(f"known[{m.name}]: the second item must be a boolean mask (True = known), a nodata "
                            f"number or None, got {mask.dtype} {mask.shape}; convert a mask with mask != 0 "
                            "(a cloud mask: ~cloudy)")
    side = (m.size, m.size)
    mask = mask[None] if mask.ndim == 2 else mask
    if mask.ndim != 3 or mask.shape[1:] != side or (len(mask) != len(pixels) and 1 not in (len(mask), len(pixels))):
        raise ModalityError(f"known[{m.name}]: mask has shape {np.shape(spec)}, expected {side} or "
                            f"({len(pixels)}, {m.size}, {m.size}): one value per {m.gsd:g} m pixel of "
                            f"{m.name}, per input")
    return mask


def check(m: Modality, mask, finite) -> None:
    """Some pixel known and some not, per input, and none of the known ones NaN."""
    for b, (row, ok) in enumerate(zip(mask, finite)):
        where = f"known[{m.name}]" + (f", input {b}" if len(mask) > 1 else "")
        if not row.any():
            raise ModalityError(f"{where}: the mask marks no pixel as known; generate {m.name} instead "
                                "(leave it out of `known`)")
        bad = int((row & ~ok).sum())
        if bad:
            raise ModalityError(f"{where}: {bad} known pixel(s) hold NaN/inf; mark them unknown in the mask "
                                "or fill them")
    if mask.all():
        raise ModalityError(f"known[{m.name}]: every pixel is known; pass {m.name} as a condition instead")


def fill(m: Modality, pixels, mask) -> np.ndarray:
    """Unknown pixels set to a neutral value per band: the mean of the known ones (class maps: the
    most frequent known class), so the encoder sees only valid values."""
    out = pixels.copy()
    for x, known in zip(out, np.broadcast_to(mask, (len(pixels), *mask.shape[1:]))):
        for band in x:
            valid = band[known]
            if m.kind == CATEGORICAL:
                codes, counts = np.unique(valid, return_counts=True)
                band[~known] = codes[np.argmax(counts)]
            else:
                band[~known] = valid.mean()
    return out


def broadcast(k: Known, batch: int) -> Known:
    """A known modality of batch 1 repeated for every input (as conditions are)."""
    if len(k.mask) == batch:
        return k
    return dataclasses.replace(k, pixels=np.broadcast_to(k.pixels, (batch, *k.pixels.shape[1:])),
                               mask=np.broadcast_to(k.mask, (batch, *k.mask.shape[1:])))


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """(B, H, W) pixel mask -> (B, H/f, W/f): a latent pixel is known when all its f x f pixels are."""
    b, h, w = mask.shape
    return mask.reshape(b, h // factor, factor, w // factor, factor).all(axis=(2, 4))


def paste(samples: np.ndarray, k: Known) -> np.ndarray:
    """(B, N, C, H, W) samples with every known pixel put back exactly, in every sample."""
    out = samples.copy()
    keep = np.broadcast_to(k.mask[:, None, None], out.shape)
    given = np.broadcast_to(k.pixels[:, None], out.shape).astype(out.dtype)
    out[keep] = given[keep]
    return out
