"""The released U-ViT's state dict <-> copgen_jax's ``UViT`` parameters (SPEC §4).

Index ``i`` of ``patch_embeds`` / ``decoder_preds`` is the modality's place in
the registry (sorted names), as in the release. The release's patch embedding
is a Conv2d with kernel = stride = patch; copgen_jax patchifies in
``(p1 p2 C)`` order and applies a Dense, so the conv weight becomes
``(p, p, C, D)`` flattened to ``(p*p*C, D)``. The fused qkv Linear (3D, D)
becomes (D, 3, heads, head_dim) and the output projection (D, D) becomes
(heads, head_dim, D), so tensor parallelism splits whole heads.

``write_run`` stores converted weights as a training run at step 0 and
``load_backbone(DIR)`` gives them back as a jitted function over dicts in the
release's layout, to compare the network with the original directly.
"""
from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from copgen_jax import checkpoint, parallel
from copgen_jax.convert.rules import Rule, check_table, conv, copy, linear, to_nnx, to_state_dict
from copgen_jax.convert.torch_io import torch_module
from copgen_jax.models.backbone import backbone_from_config
from copgen_jax.modalities import Registry, registry_from_config

__all__ = ["convert_backbone", "to_torch_state_dict", "params_state", "write_run", "load_params", "load_backbone", "BackboneFn"]


def backbone_rules(registry: Registry, hidden: int, depth: int, heads: int, mlp_ratio: int = 4) -> list[Rule]:
    d, mlp = hidden, hidden * mlp_ratio
    rules = [copy("pos_embed", ("pos_embed",), (1, registry.num_tokens, d))]
    for i, m in enumerate(registry):
        c, p = m.latent_shape[0], m.patch
        rules += [conv(f"patch_embeds.{i}.proj.weight", ("patch_embeds", i, "kernel"), d, c, p, (p * p * c, d)),
                  copy(f"patch_embeds.{i}.proj.bias", ("patch_embeds", i, "bias"), (d,))]
    blocks = [(f"in_blocks.{j}", ("in_blocks", j), False) for j in range(depth // 2)]
    blocks += [("mid_block", ("mid_block",), False)]
    blocks += [(f"out_blocks.{j}", ("out_blocks", j), True) for j in range(depth // 2)]
    for prefix, path, skip in blocks:
        rules += _block_rules(prefix, path, d, heads, mlp, skip)
    rules += _norm_rules("norm", ("norm",), d)
    for i, m in enumerate(registry):
        rules += [linear(f"decoder_preds.{i}.weight", ("decoder_preds", i, "kernel"), m.patch_dim, d),
                  copy(f"decoder_preds.{i}.bias", ("decoder_preds", i, "bias"), (m.patch_dim,))]
    return rules


def _norm_rules(key, path, d):
    return [copy(f"{key}.weight", path + ("scale",), (d,)), copy(f"{key}.bias", path + ("bias",), (d,))]


def _block_rules(key, path, d, heads, mlp, skip):
    rules = []
    for norm in (("norm1", "norm2", "norm3") if skip else ("norm2", "norm3")):
        rules += _norm_rules(f"{key}.{norm}", path + (norm,), d)
    rules += [
        linear(f"{key}.attn.qkv.weight", path + ("attn", "qkv"), 3 * d, d, (d, 3, heads, d // heads)),
        linear(f"{key}.attn.proj.weight", path + ("attn", "proj"), d, d, (heads, d // heads, d)),
        copy(f"{key}.attn.proj.bias", path + ("attn", "proj_bias"), (d,)),
        linear(f"{key}.mlp.fc1.weight", path + ("mlp", "fc1", "kernel"), mlp, d),
        copy(f"{key}.mlp.fc1.bias", path + ("mlp", "fc1", "bias"), (mlp,)),
        linear(f"{key}.mlp.fc2.weight", path + ("mlp", "fc2", "kernel"), d, mlp),
        copy(f"{key}.mlp.fc2.bias", path + ("mlp", "fc2", "bias"), (d,)),
    ]
    if skip:
        rules += [linear(f"{key}.skip_linear.weight", path + ("skip_linear", "kernel"), d, 2 * d),
                  copy(f"{key}.skip_linear.bias", path + ("skip_linear", "bias"), (d,))]
    return rules


def rules_from_config(cfg, registry: Registry) -> list[Rule]:
    mc = cfg.model
    return backbone_rules(registry, mc.hidden, mc.depth, mc.heads, mc.mlp_ratio)


def _indices(keys, prefix):
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return {int(m.group(1)) for k in keys if (m := pattern.match(k))}


def size_hints(state_dict: Mapping, registry: Registry, hidden: int, depth: int) -> list[str]:
    """Headlines when the checkpoint's modality count, width or depth differ from the config's."""
    keys = list(state_dict)
    hints = []
    mods = _indices(keys, "patch_embeds") | _indices(keys, "decoder_preds")
    if mods and len(mods) != len(registry):
        hints.append(f"the state dict holds {len(mods)} modalities (patch_embeds.{min(mods)}..{max(mods)}) but the "
                     f"config has {len(registry)} ({', '.join(registry.names)}): convert with the config the "
                     f"checkpoint was trained with (configs/base.py, large.py or huge.py for the released weights)")
    blocks = _indices(keys, "in_blocks")
    if blocks and len(blocks) != depth // 2:
        hints.append(f"the state dict has {len(blocks)} in-blocks (depth {2 * len(blocks)}), the config depth "
                     f"{depth}: set --config.model.depth")
    if "pos_embed" in state_dict and len(state_dict["pos_embed"].shape) == 3:
        _, tokens, width = state_dict["pos_embed"].shape
        if width != hidden:
            hints.append(f"the state dict has width {width}, the config {hidden}: set --config.model.hidden")
        if tokens != registry.num_tokens:
            hints.append(f"the state dict has {tokens} tokens, the config's modalities give {registry.num_tokens}")
    if keys and all("." in k for k in keys):
        heads = {k.split(".", 1)[0] for k in keys}
        if len(heads) == 1 and heads.pop() in ("module", "ema_model", "nnet", "model"):
            hints.append(f"every key starts with {keys[0].split('.', 1)[0]!r}: this is a wrapped training "
                         f"checkpoint; extract the bare EMA network's state dict (the release's nnet_ema.pth)")
    return hints


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
    torch = torch_module()
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
