"""The embedded default, end to end on a CPU (``configs/demo.py``).

  data        synthetic Copernicus world -> pixel shards      DIR/data/pixels
  tokenizers  one KL autoencoder per spatial modality         DIR/tokenizers/<modality>
  latents     pixel shards -> latent-moment shards            DIR/data/latents
  backbone    the U-ViT on the latents                         DIR/checkpoints
  report      any-to-any samples on held-out footprints        DIR/report

Every stage resumes where it stopped and is skipped once done, so rerunning
the command after an interruption (or to regenerate the report) is cheap.
"""
from __future__ import annotations

import json
import logging
import os
import time

import ml_collections

from copgen_jax import checkpoint
from copgen_jax import storage
from copgen_jax.modalities import Registry, registry_from_config


def paths(workdir) -> dict[str, str]:
    root = storage.path(workdir)
    return {k: os.fspath(root / p) for k, p in (("pixels", "data/pixels"), ("latents", "data/latents"),
                                                 ("tokenizers", "tokenizers"), ("report", "report"))}


def _manifest_done(directory) -> bool:
    return (storage.path(directory) / "manifest.json").exists()


def _trained(run_dir, steps) -> bool:
    return (checkpoint.latest_step(run_dir) or 0) >= steps


def stage_data(cfg, workdir, registry: Registry) -> None:
    out = paths(workdir)["pixels"]
    if _manifest_done(out):
        return
    from copgen_jax.datasets import build
    p = cfg.pipeline
    build.build("synthetic", out, registry, cells=p.cells, observations=p.observations, seed=p.world_seed,
                footprints_per_side=p.footprints_per_side, cells_per_shard=p.cells_per_shard,
                test_fraction=p.test_fraction, test_observations=p.test_observations, workers=p.data_workers)


def tokenizer_config(cfg, name: str, pixels: str) -> ml_collections.ConfigDict:
    """The tokenizer run for ``name``: the demo's registry, ``cfg.pipeline.tokenizer``'s model, optim
    and train sections (``tokenizer.per_modality[name]``'s sections over them), pixel shards."""
    from copgen_jax.defaults import default_config
    t = cfg.pipeline.tokenizer
    own = t.per_modality.get(name, {})  # e.g. DEM's norm groups and longer training
    unknown = set(own) - {"model", "optim", "train"}
    if unknown:
        raise ValueError(f"pipeline.tokenizer.per_modality.{name} has sections {sorted(unknown)}; "
                         "give overrides under 'model', 'optim' or 'train'")
    c = default_config()
    c.task, c.seed = "tokenizer", cfg.seed
    c.modalities = ml_collections.ConfigDict(cfg.modalities.to_dict())
    for section, target in (("model", c.tokenizer), ("optim", c.optim), ("train", c.train)):
        target.update(t[section].to_dict())
        target.update(dict(own.get(section, {})))
    c.tokenizer.modality = name
    c.data.source, c.data.shards = "shards", pixels
    c.data.shuffle_buffer = t.shuffle_buffer
    return c


def stage_tokenizers(cfg, workdir, registry: Registry) -> None:
    from copgen_jax.trainers.tokenizer import TokenizerTask
    from copgen_jax.trainers.loop import train
    p = paths(workdir)
    for m in registry.spatial:
        run_dir = os.fspath(storage.path(p["tokenizers"]) / m.name)
        tcfg = tokenizer_config(cfg, m.name, p["pixels"])
        if not _trained(run_dir, tcfg.train.steps):
            logging.info("training the %s tokenizer (%d steps)", m.name, tcfg.train.steps)
            train(tcfg, run_dir, TokenizerTask(tcfg))


def stage_latents(cfg, workdir, registry: Registry) -> None:
    from copgen_jax.latents.encode import encode_shards
    p = paths(workdir)
    if not _manifest_done(p["latents"]):
        encode_shards(p["tokenizers"], p["pixels"], p["latents"], batch_size=cfg.pipeline.encode_batch)


def backbone_config(cfg, workdir) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.data.source, c.data.shards = "shards", paths(workdir)["latents"]
    return c


def stage_backbone(cfg, workdir, registry: Registry) -> None:
    from copgen_jax.trainers.backbone import BackboneTask
    from copgen_jax.trainers.loop import train
    bcfg = backbone_config(cfg, workdir)
    if not _trained(workdir, bcfg.train.steps):
        train(bcfg, workdir, BackboneTask(bcfg))


def stage_report(cfg, workdir, registry: Registry) -> None:
    from copgen_jax.evaluate import demo_report
    out = paths(workdir)["report"]
    if (storage.path(out) / "metrics.json").exists():
        return
    demo_report.write_report(cfg, workdir, out)


STAGES = (("data", stage_data), ("tokenizers", stage_tokenizers), ("latents", stage_latents),
          ("backbone", stage_backbone), ("report", stage_report))


def run_pipeline(cfg, workdir) -> dict:
    registry = registry_from_config(cfg)
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    timings = {}
    for name, stage in STAGES:
        start = time.perf_counter()
        logging.info("=== stage %s ===", name)
        stage(cfg, workdir, registry)
        timings[name] = round(time.perf_counter() - start, 1)
        logging.info("=== stage %s done in %.1f s ===", name, timings[name])
    storage.write_text(storage.path(workdir) / "pipeline_timings.json", json.dumps(timings, indent=2))
    return {f"seconds/{k}": v for k, v in timings.items()}
