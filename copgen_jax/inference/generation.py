"""What generation returns: samples, the conditions as given, latents, statistics, footprints."""
from __future__ import annotations

import dataclasses

from copgen_jax.modalities import Registry


@dataclasses.dataclass
class Generation:
    """What ``CopGen.generate`` returns; ``gen[name]`` is ``gen.samples[name]``.

    samples: generated modality -> (B, N, *physical_shape) in physical units.
    conditions: given modality -> (B, *physical_shape), as given (validated, broadcast to B).
    latents: every modality in the sequence -> (B, N, *latent_shape), scaled as the backbone sees
      them; conditions are the one encoded latent repeated, bit for bit, in every sample.
    stats: generated modality -> {statistic: array over the N samples} (``stats=True``).
    footprints: per input, the footprint of its GeoTIFF conditions (None without any).
    known: partly known modality -> (B, H, W) mask of the pixels held exactly (True = known).
    """

    samples: dict
    conditions: dict
    latents: dict
    stats: dict
    footprints: list
    registry: Registry
    seed: int
    settings: dict
    known: dict = dataclasses.field(default_factory=dict)

    def __getitem__(self, name):
        return self.samples[name]
