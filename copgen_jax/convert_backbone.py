"""The released U-ViT's state dict <-> copgen_jax's ``UViT`` parameters (SPEC §4).

Index ``i`` of ``patch_embeds`` / ``decoder_preds`` is the modality's place in
the registry (sorted names), as in the release. The release's patch embedding
is a Conv2d with kernel = stride = patch; copgen_jax patchifies in
``(p1 p2 C)`` order and applies a Dense, so the conv weight becomes
``(p, p, C, D)`` flattened to ``(p*p*C, D)``. The fused qkv Linear (3D, D)
becomes (D, 3, heads, head_dim) and the output projection (D, D) becomes
(heads, head_dim, D), so tensor parallelism splits whole heads.
"""
from __future__ import annotations

import re
from typing import Mapping

from copgen_jax.convert_rules import Rule, conv, copy, linear
from copgen_jax.modalities import Registry


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
