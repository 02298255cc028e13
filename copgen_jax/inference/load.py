"""Loading a run for generation: the EMA backbone on a mesh and the modality tokenizers.

Both are restored into models built from shapes only (``nnx.eval_shape``): nothing is
randomly initialised, compiled or allocated twice, so loading costs the read alone.
"""
from __future__ import annotations

import dataclasses

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from copgen_jax import checkpoint, parallel
from copgen_jax.models.backbone import backbone_from_config
from copgen_jax.modalities import Registry


def run_dir(path, step: int | None):
    """(workdir, step) from a workdir or one of its ``<workdir>/checkpoints/<step>`` directories."""
    path = epath.Path(path)
    if not (path / "config.json").exists() and path.parent.name == "checkpoints" and path.name.isdigit():
        return path.parent.parent, int(path.name) if step is None else step
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; give a run directory (<workdir>) or one of its "
                                "checkpoints (<workdir>/checkpoints/<step>)")
    return path, step


def _item_path(workdir, step: int | None, item: str) -> epath.Path:
    steps = sorted(int(p.name) for p in checkpoint.checkpoint_dir(workdir).iterdir() if p.name.isdigit()) \
        if checkpoint.checkpoint_dir(workdir).exists() else []
    if not steps:
        raise FileNotFoundError(f"{checkpoint.checkpoint_dir(workdir)}: no checkpoint; train it first")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{workdir}: no checkpoint at step {step}; available: {steps}")
    path = checkpoint.checkpoint_dir(workdir) / str(step) / item
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: checkpoint {step} has no {item!r} item")
    return path


def restore_into(abstract_module, path, shardings=None) -> nnx.Module:
    """``abstract_module`` (from ``nnx.eval_shape``) with its Params read from the Orbax item ``path``."""
    graphdef, state = nnx.split(abstract_module, nnx.Param)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, state)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, target)
    return nnx.merge(graphdef, restored)


WEIGHTS = {"ema": "ema_params", "raw": "params"}  # which of a checkpoint's parameter sets samples


def restore_backbone(cfg, registry: Registry, workdir, step: int | None, mesh, weights: str = "ema") -> nnx.Module:
    """A run's backbone (its EMA, or with ``weights="raw"`` the optimiser's own parameters), read
    straight into its shardings on ``mesh``."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {sorted(WEIGHTS)}, got {weights!r}")
    rules = parallel.rules_from_config(cfg.mesh)
    abstract = parallel.abstract_model(lambda: backbone_from_config(cfg, registry, nnx.Rngs(0)), mesh, rules)
    shardings = parallel.param_shardings(abstract, mesh, rules)
    return restore_into(abstract, _item_path(workdir, step, WEIGHTS[weights]), shardings)


def load_autoencoders(tokenizers_dir, registry: Registry):
    """Every spatial modality's autoencoder, and the registry with the tokenizers' scale factors.

    A tokenizer's ``scale_factor.json`` (written when its latents were encoded) wins over
    the registry's default, so sampling scales latents as the latent shards were scaled.
    """
    from copgen_jax.latents.store import load_tokenizer
    root = epath.Path(tokenizers_dir)
    out, factors = {}, {}
    for m in registry.spatial:
        run = root / m.name
        if not (run / "config.json").exists():
            raise FileNotFoundError(f"{run}: no tokenizer run for {m.name}; train one with `python -m "
                                    f"copgen_jax.main --config=configs/tokenizer.py --config.tokenizer."
                                    f"modality={m.name} --workdir={run}` or convert the released weights")
        tok = load_tokenizer(run, registry=registry)  # the EMA weights; a stale scale factor is ignored
        if tok.scale_factor is None and tok.cfg.tokenizer.center_latents:
            raise FileNotFoundError(f"{run}: a centring tokenizer without its {m.name} scale_factor.json for step "
                                    f"{tok.step}, which holds the latent shift its backbone was trained with; "
                                    "copy it from the run that encoded the latents (or rerun copgen_jax.latents.encode)")
        out[m.name], factors[m.name] = tok.autoencoder, tok.scale_factor
        check_tokenizer(tok.autoencoder, m, str(run))
    registry = Registry(dataclasses.replace(m, scale_factor=factors[m.name]) if factors.get(m.name) else m
                        for m in registry)
    return out, registry


def check_tokenizer(autoencoder, modality, where: str) -> None:
    """A tokenizer must give the latent its backbone was built for: same channels, same reduction."""
    if (autoencoder.z_channels, autoencoder.downsample) != (modality.latent_channels, modality.downsample):
        raise ValueError(f"{where}: the {modality.name} tokenizer gives {autoencoder.z_channels} channels at "
                         f"1/{autoencoder.downsample} of {modality.size} px; the backbone expects "
                         f"{modality.latent_shape} (1/{modality.downsample}); use tokenizers of its registry "
                         f"(modalities.downsample, modalities.per_modality)")
