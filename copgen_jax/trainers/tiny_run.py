"""A small but complete run directory in seconds: for tests, the notebook's tiny mode, benchmarks.

    make_run(workdir, backbone_cfg, tokenizer_cfg)

trains the backbone for ``backbone_cfg.train.steps`` steps (on whatever data its config
names: synthetic latents for ``configs/test.py``) and writes one tokenizer run per spatial
modality under ``<workdir>/tokenizers/<modality>/`` — trained for ``tokenizer_steps`` steps on
``tokenizer_cfg``'s data, or left at its random initialisation when 0 — each with its
scale factor computed from a few of its training batches. Nothing trained this briefly
generates anything meaningful; the layout, shapes and code paths are the real ones.
Finished parts are kept: a second call returns at once.
"""
from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from copgen_jax import checkpoint, parallel
from copgen_jax import storage
from copgen_jax.modalities import registry_from_config


def tokenizer_run_config(backbone_cfg, tokenizer_cfg, modality: str, steps: int) -> ml_collections.ConfigDict:
    """``tokenizer_cfg`` for ``modality``, on the backbone's registry."""
    cfg = ml_collections.ConfigDict(tokenizer_cfg.to_dict())
    cfg.modalities = ml_collections.ConfigDict(backbone_cfg.modalities.to_dict())
    cfg.tokenizer.modality = modality
    cfg.train.steps = max(steps, 1)
    cfg.train.checkpoint_every = max(steps, 1)
    cfg.train.log_every = max(steps, 1)
    cfg.train.async_checkpoint = False
    return cfg


def host_initialised(ctor, seed: int) -> nnx.Module:
    """The module ``ctor`` builds, with random weights drawn on the host.

    PyTorch-style U(+-1/sqrt(fan_in)) kernels, zero biases, unit norm scales. Unlike
    initialising on device, this compiles nothing (seconds saved per tiny model).
    """
    abstract = parallel.abstract_model(ctor)
    graphdef, state = nnx.split(abstract, nnx.Param)
    rng = np.random.default_rng(seed)

    def init(path, x):
        if str(path[-1]) == "scale":
            return np.ones(x.shape, x.dtype)
        if len(x.shape) < 2:
            return np.zeros(x.shape, x.dtype)
        bound = 1.0 / np.sqrt(np.prod(x.shape[:-1]))
        return rng.uniform(-bound, bound, x.shape).astype(x.dtype)

    pure = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(
        lambda p, x: jax.numpy.asarray(init([getattr(k, "key", k) for k in p], x)), pure))
    return nnx.merge(graphdef, state)


def make_tokenizer(run_dir: str, cfg, steps: int, scale_factor: bool = True) -> None:
    from copgen_jax.latents.store import compute_scale_factor, export_tokenizer, load_tokenizer, write_scale_factor
    from copgen_jax.trainers.tokenizer import TokenizerTask
    task = TokenizerTask(cfg)
    if checkpoint.latest_step(run_dir) is None:
        if steps:
            from copgen_jax.trainers.loop import train
            train(cfg, run_dir, task)
        else:
            export_tokenizer(run_dir, cfg, host_initialised(lambda: task.create_model(nnx.Rngs(0)), cfg.seed))
    if scale_factor and not (storage.path(run_dir) / "scale_factor.json").exists():
        tok = load_tokenizer(run_dir, registry=task.registry)
        it = task.make_iterator(0, 1, cfg.seed)
        batches = (next(it)["pixels"] for _ in range(cfg.tokenizer.scale_factor_batches))
        write_scale_factor(run_dir, compute_scale_factor(tok, batches, seed=cfg.seed))


def make_run(workdir, backbone_cfg, tokenizer_cfg, *, tokenizer_steps: int = 0, scale_factors: bool = True,
             mesh=None) -> str:
    """Backbone at ``workdir`` plus ``workdir/tokenizers/<modality>`` for every spatial modality.

    Without ``scale_factors`` the tokenizers get no scale_factor.json (the registry's factors apply).
    """
    workdir = os.fspath(workdir)
    if checkpoint.latest_step(workdir) is None:
        from copgen_jax.trainers.backbone import BackboneTask
        from copgen_jax.trainers.loop import train
        logging.info("training the backbone in %s", workdir)
        train(backbone_cfg, workdir, BackboneTask(backbone_cfg), mesh=mesh)
    for m in registry_from_config(backbone_cfg).spatial:
        cfg = tokenizer_run_config(backbone_cfg, tokenizer_cfg, m.name, tokenizer_steps)
        make_tokenizer(os.fspath(storage.path(workdir) / "tokenizers" / m.name), cfg, tokenizer_steps, scale_factors)
    return workdir
