"""The deterministic baseline: COP-GEN's backbone trained as a one-shot MSE regressor.

The same U-ViT, on the same latents, with one change of role per modality: generated
("target") modalities enter as zeros at timestep N (no information, and no noise, so the
output is a function of the conditions alone) and the head's output for them is read as the
clean latent x0 itself; conditions enter clean at timestep 0, as in sampling. The loss is
the mean squared error of x0 on the targets, so the network learns E[x0 | conditions]: the
conditional mean, the best any deterministic model can do under squared error. Run through
the stochastic benchmark it shows what a mean collapses to (recall near 0, low range
coverage, no spread between "samples").

Training (``BaselineTask`` in ``copgen_jax.trainers.loop``): per example, each modality present in
the data is a target with probability ``baseline.target_rate`` (at least one per example),
or, if ``baseline.targets`` names modalities, exactly those; every other present modality is
a condition, left out (masked from attention, as absent at sampling) with probability
``baseline.condition_dropout``, so one network serves every any-to-any task and every subset
of conditions, like the diffusion model it is compared with. The run lives in
``<workdir>/baseline/`` (config.json, checkpoints) and resumes like any other.

Prediction is ``copgen_jax.evaluate.baseline.Baseline``.
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from copgen_jax import checkpoint, draws, storage
from copgen_jax.trainers.backbone import BackboneTask
from copgen_jax.diffusion.schedule import diffusion_loss

BASELINE_DIR = "baseline"


class BaselineTask(BackboneTask):
    """x0 regression of target modalities (zeros at timestep N) from clean conditions (timestep 0)."""

    def __init__(self, cfg, registry=None):
        super().__init__(cfg, registry)
        self.settings = cfg.baseline
        for name in self.settings.targets:
            self.registry[name]  # an unknown name raises, listing the known ones

    def roles(self, present: dict, keys) -> tuple[dict, dict]:
        """(target, in_sequence): name -> (B,) bool. Targets are a subset of the present modalities."""
        names = list(present)
        avail = jnp.stack([present[n].astype(bool) for n in names], 1)  # (B, M)
        t_keys, f_keys, d_keys = draws.split(keys, 3)
        if self.settings.targets:
            chosen = jnp.asarray([n in self.settings.targets for n in names])[None] & avail
        else:
            u = draws.uniform(t_keys, avail.shape[1:])
            chosen = (u < self.settings.target_rate) & avail
            # An example with no target would teach nothing: make one present modality a target.
            pick = jnp.argmin(jnp.where(avail, draws.uniform(f_keys, avail.shape[1:]), 2.0), 1)
            forced = jax.nn.one_hot(pick, len(names), dtype=bool) & avail
            chosen = jnp.where(chosen.any(1, keepdims=True), chosen, forced)
        kept = avail & (chosen | (draws.uniform(d_keys, avail.shape[1:]) >= self.settings.condition_dropout))
        return ({n: chosen[:, i] for i, n in enumerate(names)}, {n: kept[:, i] for i, n in enumerate(names)})

    def loss(self, model, batch, keys, step):
        latents = batch["latents"]
        target, kept = self.roles(batch["present"], keys)
        n_max = self.schedule.num_steps
        inputs, timesteps = {}, {}
        for name, x in latents.items():
            t = target[name]
            inputs[name] = jnp.where(t.reshape((-1,) + (1,) * (x.ndim - 1)), 0.0, x)
            timesteps[name] = jnp.where(t, n_max, 0).astype(jnp.int32)
        pred = model(inputs, timesteps, kept)
        total, per_mod = diffusion_loss(pred, latents, target)  # MSE of x0 on the targets only
        return total, {f"loss/{n}": v for n, v in per_mod.items()}


# -- the run ---------------------------------------------------------------------------------
def baseline_dir(workdir) -> str:
    return os.fspath(storage.path(workdir) / BASELINE_DIR)


def baseline_config(workdir, steps: int) -> ml_collections.ConfigDict:
    """The diffusion run's config (model, registry, data, optimiser) with the baseline's knobs.

    Latents come from ``<workdir>/data/latents`` when it exists (the diffusion run's own
    shards, whatever working directory the run was started from), else from the run's config.
    """
    cfg = checkpoint.load_config(workdir)  # the run's own baseline block, over the defaults
    cfg.task = "baseline"
    cfg.diffusion.modality_dropout = cfg.baseline.condition_dropout  # sampling then drops absent modalities
    latents = storage.path(workdir) / "data" / "latents"
    if cfg.data.source == "shards" and (latents / "manifest.json").exists():
        cfg.data.shards = os.fspath(storage.absolute(latents))
    cfg.train.steps = steps
    cfg.train.checkpoint_every = min(cfg.train.checkpoint_every, steps)
    cfg.train.log_every = min(cfg.train.log_every, steps)
    return cfg


def train_baseline(workdir, steps: int | None = None) -> str:
    """Train (or resume) ``<workdir>/baseline`` up to ``steps`` (default: as many as the diffusion run)."""
    from copgen_jax.trainers.loop import train
    out = baseline_dir(workdir)
    if steps is None:
        steps = checkpoint.latest_step(workdir) or checkpoint.load_config(workdir).train.steps
    if (checkpoint.latest_step(out) or 0) >= steps:
        return out
    cfg = baseline_config(workdir, steps)
    logging.info("training the deterministic baseline in %s (%d steps)", out, steps)
    train(cfg, out, BaselineTask(cfg))
    return out


def is_baseline_run(path) -> bool:
    return (storage.path(path) / "config.json").exists() and checkpoint.load_config(path).task == "baseline"
