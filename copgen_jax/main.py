"""Entry point: ``python -m copgen_jax.main --config=configs/NAME.py --workdir=DIR``.

``--config.x=y`` overrides any config value; ``--describe`` prints the model's
size and layout (last line: one JSON object) without allocating it, and with
``--compile`` also compiles the real training step for the config's mesh on the
devices present and reports its memory per device and its collectives.
"""
from __future__ import annotations

import json
import logging

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from copgen_jax import defaults, parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://...).")
_DESCRIBE = flags.DEFINE_bool("describe", False, "Print parameter count, tokens and per-device bytes; exit.")
_COMPILE = flags.DEFINE_bool("compile", False, "With --describe: compile the training step (allocating nothing) "
                             "and add its peak and temporary bytes per device and its collectives.")


def describe(cfg, compile_step: bool = False) -> dict:
    """Size and layout of the configured backbone, from shapes only; with ``compile_step``
    also what its compiled training step needs per device (``trainers.compiled``)."""
    from copgen_jax.trainers.backbone import BackboneTask
    task = BackboneTask(cfg)
    rules = parallel.rules_from_config(cfg.mesh)
    model = parallel.abstract_model(lambda: task.create_model(nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    mesh = parallel.abstract_mesh(cfg.mesh, jax.device_count() if -1 in _mesh_sizes(cfg) else None)
    out = {
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
        "tokens": task.registry.num_tokens,
        "tokens_per_modality": {m.name: m.num_tokens for m in task.registry},
        "mesh": dict(zip(parallel.MESH_AXES, mesh.axis_sizes)),
        "param_bytes_per_device": parallel.bytes_per_device(params, mesh, rules),
        "param_bytes_total": int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params))),
        "attention": cfg.model.attention, "remat_policy": cfg.model.remat_policy, "scan_blocks": cfg.model.scan_blocks,
    }
    if compile_step:
        from copgen_jax.trainers.compiled import step_report
        out.update(step_report(cfg, task))
    return out


def _mesh_sizes(cfg):
    return [cfg.mesh[a] for a in parallel.MESH_AXES]


def run(cfg, workdir):
    if cfg.task == "backbone":
        from copgen_jax.trainers.backbone import BackboneTask
        from copgen_jax.trainers.loop import train
        return train(cfg, workdir, BackboneTask(cfg))
    if cfg.task == "tokenizer":
        from copgen_jax.trainers.tokenizer import TokenizerTask
        from copgen_jax.trainers.loop import train
        return train(cfg, workdir, TokenizerTask(cfg))
    if cfg.task == "pipeline":
        from copgen_jax.pipeline import run_pipeline
        return run_pipeline(cfg, workdir)
    raise ValueError(f"unknown task {cfg.task!r}: expected backbone, tokenizer or pipeline")


class _QuietLibraries(logging.Filter):
    """Keep INFO lines of our own; libraries (Orbax logs every file rename) only from WARNING."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or "copgen_jax" in record.pathname


def main(argv):
    del argv
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    cfg = _CONFIG.value
    if cfg is None:
        raise app.UsageError("--config=configs/NAME.py is required")
    defaults.check(cfg)
    if _DESCRIBE.value:
        print(json.dumps(describe(cfg, _COMPILE.value)))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required to train")
    parallel.initialize_distributed()
    metrics = run(cfg, _WORKDIR.value)
    if metrics:
        logging.info("final metrics %s", json.dumps({k: float(v) for k, v in metrics.items()}, sort_keys=True))


def entry():
    logging.getLogger().setLevel(logging.INFO)
    app.run(main)


if __name__ == "__main__":
    entry()
