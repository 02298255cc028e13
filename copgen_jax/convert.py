"""Released COP-GEN PyTorch weights -> a copgen_jax run directory, and back.

    python -m copgen_jax.convert --backbone nnet_ema.pth [--tokenizers DIR] \\
        --config configs/base.py --out DIR
    python -m copgen_jax.convert --check-parity --backbone nnet_ema.pth \\
        [--tokenizers DIR] --config configs/base.py

The output looks like a training run at step 0: ``DIR/config.json`` and
``DIR/checkpoints/0/{params,ema_params}`` (the same converted weights, no
optimizer state), so sampling loads it and the training loop fine-tunes it.
Converted tokenizers go to ``DIR/tokenizers/<modality>/`` in the same layout.
PyTorch is needed only to read the ``.pth`` files (the ``torch`` extra), on CPU.

``load_backbone(DIR)`` gives the converted network as a jitted function over
dicts in the release's layout, to compare it with the original directly.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from copgen_jax import checkpoint, parallel
from copgen_jax.convert_backbone import rules_from_config, size_hints
from copgen_jax.convert_rules import ConversionError, Job, check_table, to_nnx, to_state_dict
from copgen_jax.models.backbone import backbone_from_config
from copgen_jax.modalities import Registry, registry_from_config

__all__ = ["ConversionError", "load_torch_state_dict", "convert_backbone", "to_torch_state_dict",
           "params_state", "write_run", "load_params", "load_backbone", "BackboneFn"]


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs torch (CPU is enough): "
                          "pip install 'copgen_jax[torch]' or pip install torch") from e
    return torch


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
    """A ``.pth`` state dict as float32 numpy arrays, read on the CPU."""
    torch = _torch()
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    with path.open("rb") as f:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping) or not all(hasattr(v, "shape") for v in sd.values()):
        kinds = sorted({type(v).__name__ for v in sd.values()}) if isinstance(sd, Mapping) else [type(sd).__name__]
        raise ConversionError(f"{path} is not a flat state dict of tensors (found {', '.join(kinds)}); "
                              f"give the bare network's weights (the release's nnet_ema.pth / model-50-ema.pth)")
    return {k: v.detach().to(torch.float32).numpy() for k, v in sd.items()}


def _registry(cfg, registry):
    return registry if registry is not None else registry_from_config(cfg)


def _abstract_model(cfg, registry):
    return parallel.abstract_model(lambda: backbone_from_config(cfg, registry, nnx.Rngs(0)))


def _abstract_params(cfg, registry):
    return nnx.to_pure_dict(nnx.state(_abstract_model(cfg, registry), nnx.Param))


def params_state(cfg, params: Mapping, registry: Registry | None = None) -> nnx.State:
    """A pure dict of parameters as the ``nnx.Param`` state that runs checkpoint and restore.

    Built from shapes only, then filled: no random initialisation to throw away.
    """
    if isinstance(params, nnx.State):
        return params
    _, state = nnx.split(_abstract_model(cfg, _registry(cfg, registry)), nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(params)))
    return state


def convert_backbone(state_dict: Mapping, cfg, registry: Registry | None = None, source: str = "state dict") -> dict:
    """Release state dict -> ``UViT`` parameters (nested pure dict of float32 arrays)."""
    registry = _registry(cfg, registry)
    rules = rules_from_config(cfg, registry)
    check_table(rules, _abstract_params(cfg, registry), "backbone")
    hints = size_hints(state_dict, registry, cfg.model.hidden, cfg.model.depth)
    what = (f"{source} into the backbone of the config ({len(registry)} modalities, hidden {cfg.model.hidden}, "
            f"depth {cfg.model.depth}, {cfg.model.heads} heads)")
    return to_nnx(rules, state_dict, what, hints)


def to_torch_state_dict(params: Mapping, cfg, registry: Registry | None = None, as_numpy: bool = False) -> dict:
    """``UViT`` parameters -> the release's state dict (torch tensors, or numpy with ``as_numpy``)."""
    registry = _registry(cfg, registry)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params)
    sd = to_state_dict(rules_from_config(cfg, registry), params, "backbone parameters into the release's layout")
    if as_numpy:
        return sd
    torch = _torch()
    return {k: torch.from_numpy(v) for k, v in sd.items()}


# ---------------------------------------------------------------------------
# Run directories.
# ---------------------------------------------------------------------------


def write_run(workdir, cfg, params: Mapping, step: int = 0) -> epath.Path:
    """``workdir/config.json`` + ``checkpoints/<step>/{params,ema_params}``, like a training run.

    Both items hold the ``nnx.Param`` state, as the training loop saves them;
    there is no ``opt_state``, so fine-tuning starts its optimizer fresh.
    """
    workdir = epath.Path(workdir)
    if checkpoint.latest_step(workdir) is not None:
        raise FileExistsError(f"{workdir} already holds checkpoints; choose an empty --out directory")
    state = params_state(cfg, params)
    checkpoint.save_config(workdir, cfg)
    mgr = checkpoint.manager(workdir, keep=1, async_save=False)
    checkpoint.save(mgr, step, {"params": state, "ema_params": state}, force=True)
    mgr.wait_until_finished()
    mgr.close()
    return workdir


def load_params(workdir, item: str = "ema_params", step: int | None = None):
    """``(config, registry, nnx.Param state)`` of a run's checkpoint item, on the default device."""
    cfg = checkpoint.load_config(workdir)
    registry = registry_from_config(cfg)
    step = checkpoint.latest_step(workdir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{checkpoint.checkpoint_dir(workdir)} holds no checkpoint")
    path = checkpoint.checkpoint_dir(workdir) / str(step) / item
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the checkpoint at step {step} has no {item!r} item")
    _, state = nnx.split(_abstract_model(cfg, registry), nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
    with ocp.StandardCheckpointer() as ckptr:
        return cfg, registry, ckptr.restore(path, target)


class BackboneFn:
    """A backbone as ``f(latents, timesteps) -> outputs``, jitted.

    Dicts keyed by modality name in the release's layout: latents
    (B, C, H, W) float32, timesteps (B,) (integers or fractional), outputs
    (B, C, H, W) float32 numpy arrays. Any subset of the config's modalities
    may be given (the rest are dropped from the token sequence); give all of
    them to match the release, which always runs the full sequence.
    """

    def __init__(self, cfg, registry: Registry, params):
        self.config, self.registry = cfg, registry
        graphdef, _ = nnx.split(_abstract_model(cfg, registry), nnx.Param)
        self._state = params_state(cfg, params, registry)
        self.model = nnx.merge(graphdef, self._state)
        self._forward = jax.jit(lambda s, x, t: nnx.merge(graphdef, s)(x, t))

    def __call__(self, latents: Mapping, timesteps: Mapping) -> dict[str, np.ndarray]:
        missing = [n for n in latents if n not in timesteps]
        if missing:
            raise ValueError(f"no timestep given for {', '.join(missing)}")
        x = {n: jnp.asarray(np.asarray(v), jnp.float32) for n, v in latents.items()}
        t = {n: jnp.asarray(np.asarray(timesteps[n]), jnp.float32) for n in latents}
        return {n: np.asarray(v) for n, v in self._forward(self._state, x, t).items()}


def load_backbone(workdir, item: str = "ema_params") -> BackboneFn:
    """The backbone of a run directory (converted or trained) as a jitted callable."""
    return BackboneFn(*load_params(workdir, item))


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


MANIFEST = "conversion.json"


def _manifest(out: epath.Path) -> dict:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _fingerprint(source: epath.Path) -> dict:
    stat = source.stat()
    return {"source": str(source), "bytes": stat.length, "mtime": stat.mtime}


def _record(out: epath.Path, label: str, source: epath.Path) -> None:
    entries = dict(_manifest(out), **{label: _fingerprint(source)})
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    tmp.replace(out / MANIFEST)


def convert_files(cfg, backbone: str | None, tokenizers: str | None, out: str) -> None:
    """Check every file first (all problems at once), then convert and write them one by one.

    ``out/conversion.json`` records what is done, so an interrupted conversion
    resumes where it stopped when run again with the same files.
    """
    from copgen_jax.convert_tokenizer import tokenizer_jobs
    if backbone is None and tokenizers is None:
        raise ConversionError("nothing to convert: give --backbone PATH.pth and/or --tokenizers DIR")
    out = epath.Path(out)
    jobs = []
    if backbone is not None:
        jobs.append(Job("backbone", epath.Path(backbone), out / "checkpoints" / "0",
                        lambda sd: convert_backbone(sd, cfg, source=str(backbone)), lambda p: write_run(out, cfg, p)))
    if tokenizers is not None:
        jobs += tokenizer_jobs(cfg, tokenizers, out)
    done = _manifest(out)
    is_done = {job.label: done.get(job.label) == _fingerprint(job.source) and job.target.exists() for job in jobs}
    taken = [str(job.target) for job in jobs if job.target.exists() and not is_done[job.label]]
    if taken:
        raise FileExistsError(f"{', '.join(taken)} already exist(s) and did not come from these files "
                              f"(see {out / MANIFEST}); delete them or choose an empty --out directory")
    todo = [job for job in jobs if not is_done[job.label]]
    for job in jobs:
        if is_done[job.label]:
            print(f"{job.label}: already converted in {job.target}", flush=True)
    errors = []
    for i, job in enumerate(todo):
        print(f"[{i + 1}/{len(todo)}] checking {job.label}: {job.source}", flush=True)
        try:
            job.convert(load_torch_state_dict(job.source))
        except ConversionError as e:
            errors.append(str(e))
    if errors:
        raise ConversionError("\n".join(errors) + "\nnothing was written")
    checkpoint.save_config(out, cfg)
    for i, job in enumerate(todo):
        params = job.convert(load_torch_state_dict(job.source))
        job.write(params)
        _record(out, job.label, job.source)
        print(f"[{i + 1}/{len(todo)}] {job.label}: {job.source} -> {job.target} ({_count(params):,} parameters)",
              flush=True)


def _count(params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def _define_flags():
    from absl import flags
    from ml_collections import config_flags
    return dict(
        config=config_flags.DEFINE_config_file("config", None, "Config file the weights belong to "
                                               "(configs/base.py for the released base model)."),
        backbone=flags.DEFINE_string("backbone", None, "The release's backbone state dict (nnet_ema.pth)."),
        tokenizers=flags.DEFINE_string("tokenizers", None, "Directory of per-modality autoencoder state dicts: "
                                       "<modality>.pth or <modality>/model-50-ema.pth."),
        out=flags.DEFINE_string("out", None, "Output run directory (conversion)."),
        parity=flags.DEFINE_bool("check-parity", False, "Compare with the release's PyTorch modules instead of "
                                 "converting; needs the release on PYTHONPATH."),
        seeds=flags.DEFINE_integer("seeds", 3, "Parity: number of random input draws."),
        batch=flags.DEFINE_integer("batch", 2, "Parity: batch size per draw."),
        tolerance=flags.DEFINE_float("tolerance", 1e-4, "Parity: largest accepted relative error."),
    )


def main(argv, flag_values) -> int:
    from absl import app
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    cfg = flag_values["config"].value
    if cfg is None:
        raise app.UsageError("--config=configs/NAME.py is required (the config the weights were trained with)")
    backbone, tokenizers = flag_values["backbone"].value, flag_values["tokenizers"].value
    try:
        if flag_values["parity"].value:
            from copgen_jax import convert_parity
            return convert_parity.run(cfg, backbone, tokenizers, seeds=flag_values["seeds"].value,
                                      batch=flag_values["batch"].value, tolerance=flag_values["tolerance"].value)
        if not flag_values["out"].value:
            raise app.UsageError("--out DIR is required to convert")
        convert_files(cfg, backbone, tokenizers, flag_values["out"].value)
    except (ConversionError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from absl import app
    _flag_values = _define_flags()
    logging.getLogger().setLevel(logging.INFO)
    app.run(lambda argv: sys.exit(main(argv, _flag_values)))
