"""The diffusion task for the U-ViT backbone (SPEC §5), pluggable into train.py."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from copgen_jax import draws
from copgen_jax.diffusion.schedule import diffusion_loss, schedule_from_config
from copgen_jax.models.backbone import backbone_from_config
from copgen_jax.modalities import Registry, registry_from_config
from copgen_jax.data.seeded import SeededSource


class BackboneTask:
    """ε- (or v-) prediction with an independent timestep per sample and per modality."""

    def __init__(self, cfg, registry: Registry | None = None):
        self.cfg = cfg
        self.registry = registry or registry_from_config(cfg)
        self.schedule = schedule_from_config(cfg)

    def create_model(self, rngs: nnx.Rngs):
        return backbone_from_config(self.cfg, self.registry, rngs)

    def loss(self, model, batch, keys, step):
        """Loss of one batch; ``keys`` (one per example, see ``copgen_jax.draws``) drive every draw."""
        z_keys, t_keys, n_keys, d_keys, c_keys = draws.split(keys, 5)
        if "mean" in batch:  # moments from the input pipeline (input_pipeline.sample_on="device"): draw z here
            from copgen_jax.data.input_pipeline import sample_latents
            batch = sample_latents(batch, z_keys, self.registry)
        latents, present = batch["latents"], batch["present"]
        names = list(latents)
        present = self._drop(present, d_keys)
        clean = self._conditions(present, c_keys)
        steps = draws.randint(t_keys, 1, self.schedule.num_steps + 1, (len(names),))  # n ~ U{1..N}
        timesteps = {n: jnp.where(clean[n], 0, steps[:, i]) for i, n in enumerate(names)}
        noise = {n: draws.normal(k, latents[n].shape[1:]) for n, k in zip(names, draws.split(n_keys, len(names)))}
        noisy = {n: self.schedule.q_sample(latents[n], timesteps[n], noise[n]) for n in names}
        pred = model(noisy, timesteps, present)
        targets = {n: present[n] & ~clean[n] for n in names}
        wanted = {n: self.schedule.target(latents[n], timesteps[n], noise[n]) for n in names}
        total, per_mod = diffusion_loss(pred, wanted, targets)
        return total, {f"loss/{n}": v for n, v in per_mod.items()}

    def _conditions(self, present, keys):
        """(sample, modality) pairs fed clean at timestep 0, as sampling feeds conditions; no loss.

        The release draws n >= 1 only, so the exact input its sampler conditions
        on (n = 0) is never seen in training; ``diffusion.condition_rate`` > 0
        trains on it, which short runs need to follow their conditions.
        """
        u = draws.uniform(keys, (len(present),))
        return {n: present[n] & (u[:, i] < self.cfg.diffusion.condition_rate) for i, n in enumerate(present)}

    def _drop(self, present, keys):
        """Randomly mark (sample, modality) pairs absent: they leave attention and the loss."""
        p = self.cfg.diffusion.modality_dropout
        if not p:
            return present
        u = draws.uniform(keys, (len(present),))
        return {n: present[n] & (u[:, i] >= p) for i, n in enumerate(present)}

    def batch_shapes(self, global_batch: int) -> dict:
        """Shapes of one global batch as ``make_iterator`` yields it (moments when z is drawn
        on device, latents otherwise), for compiling the step without data."""
        def arrays(dtype=np.float32):
            return {m.name: jax.ShapeDtypeStruct((global_batch, *m.latent_shape), dtype) for m in self.registry}
        present = {m.name: jax.ShapeDtypeStruct((global_batch,), np.bool_) for m in self.registry}
        if self.cfg.data.source == "shards" and self.cfg.data.sample_on == "device":
            return {"mean": arrays(), "logvar": arrays(), "present": present}
        return {"latents": arrays(), "present": present}

    def make_iterator(self, process_index, process_count, seed):
        if self.cfg.data.source == "synthetic_latents":
            return SyntheticLatents(self.registry, self.cfg.train.global_batch, seed, process_index, process_count,
                                    num_examples=self.cfg.data.num_examples)
        from copgen_jax.data import input_pipeline
        files, self.registry = latent_shards(self.cfg.data.shards, self.registry)
        return input_pipeline.make_latent_iterator(self.cfg, self.registry, files, process_index=process_index,
                                         process_count=process_count, seed=seed,
                                         sample_on=self.cfg.data.sample_on)


def latent_shards(spec: str, registry: Registry, split: str = "train"):
    """Shard files of a latent set (its directory, or a glob) and the registry with its scale factors.

    A directory's manifest records the factor each modality was encoded with
    (for trained tokenizers 1 / std of their own latents); latents are scaled by it.
    """
    from copgen_jax import storage
    from copgen_jax.data import shards
    files = shards.resolve_shards(spec, split)
    if storage.path(spec).is_dir():
        recorded = shards.load_manifest(spec).get("registry", {})
        registry = Registry(dataclasses.replace(m, scale_factor=recorded.get(m.name, {}).get("scale_factor")
                                                or m.scale_factor) for m in registry)
    return files, registry


class SyntheticLatents(SeededSource):
    """A seeded in-memory set of latents of the right shapes (no real content).

    Smooth random fields, reproducible from (seed, example index). Nothing trained
    on it says anything about model quality: it exists to exercise the training
    machinery before real shards exist.
    """

    def __init__(self, registry, global_batch, seed, process_index=0, process_count=1, num_examples=256):
        super().__init__(global_batch, seed, process_index, process_count, num_examples)
        self.registry = registry

    def example(self, index):
        rng = np.random.default_rng([self.seed, index])
        out = {}
        for m in self.registry:
            c, h, w = m.latent_shape
            coarse = rng.standard_normal((c, max(h // 2, 1), max(w // 2, 1)))
            field = np.kron(coarse, np.ones((2, 2)))[:, :h, :w] if h > 1 else rng.standard_normal((c, h, w))
            out[m.name] = field.astype(np.float32)
        return out

    def collate(self, rows):
        latents = {m.name: np.stack([r[m.name] for r in rows]) for m in self.registry}
        present = {m.name: np.ones(len(rows), bool) for m in self.registry}
        return {"latents": latents, "present": present}
