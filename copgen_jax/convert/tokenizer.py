"""The release's per-modality autoencoders <-> copgen_jax's ``AutoencoderKL`` (SPEC §3).

The release keeps the Stable-Diffusion KL autoencoder's names, and so does
``copgen_jax.models.tokenizer``; the table below spells out every tensor from
(ch, ch_mult, num_res_blocks, z_channels) and the band counts: Conv2d weights
(out, in, kh, kw) become (kh, kw, in, out), GroupNorm ``weight`` becomes
``scale``. The attention's q/k/v/proj_out are 1x1 convolutions in both.

A converted tokenizer is written as a tokenizer run (``copgen_jax.latents.store``):
``<out>/tokenizers/<modality>/`` with ``config.json``, a step-0 checkpoint and
``scale_factor.json`` holding the release's official scale factor (the
registry's). The release ships no discriminator: a converted run's
discriminator (used only when fine-tuning past ``disc_start``) starts fresh.
"""
from __future__ import annotations

import functools
import os
from typing import Mapping

import jax
import numpy as np
from etils import epath
from flax import nnx

from copgen_jax import checkpoint, parallel
from copgen_jax.defaults import with_defaults
from copgen_jax.convert.rules import ConversionError, Job, Rule, check_table, conv, copy, to_nnx, to_state_dict
from copgen_jax.convert.torch_io import load_torch_state_dict
from copgen_jax.latents.store import export_tokenizer, write_scale_factor
from copgen_jax.modalities import Modality, Registry, registry_from_config
from copgen_jax.models.tokenizer import autoencoder_from_config, tokenizer_model_from_config


def tokenizer_rules(in_channels: int, out_channels: int, ch: int, ch_mult, num_res_blocks: int,
                    z_channels: int) -> list[Rule]:
    rules: list[Rule] = []

    def conv_(key, path, cin, cout, k):
        rules.extend([conv(f"{key}.weight", path + ("kernel",), cout, cin, k),
                      copy(f"{key}.bias", path + ("bias",), (cout,))])

    def norm_(key, path, c):
        rules.extend([copy(f"{key}.weight", path + ("scale",), (c,)), copy(f"{key}.bias", path + ("bias",), (c,))])

    def resnet(key, path, cin, cout):
        norm_(f"{key}.norm1", path + ("norm1",), cin)
        conv_(f"{key}.conv1", path + ("conv1",), cin, cout, 3)
        norm_(f"{key}.norm2", path + ("norm2",), cout)
        conv_(f"{key}.conv2", path + ("conv2",), cout, cout, 3)
        if cin != cout:
            conv_(f"{key}.nin_shortcut", path + ("nin_shortcut",), cin, cout, 1)

    def mid(key, path, c):
        resnet(f"{key}.block_1", path + ("block_1",), c, c)
        norm_(f"{key}.attn_1.norm", path + ("attn_1", "norm"), c)
        for part in ("q", "k", "v", "proj_out"):
            conv_(f"{key}.attn_1.{part}", path + ("attn_1", part), c, c, 1)
        resnet(f"{key}.block_2", path + ("block_2",), c, c)

    levels = len(ch_mult)
    # encoder: conv_in, levels of num_res_blocks resnets (+ downsample but the last), mid, out
    conv_("encoder.conv_in", ("encoder", "conv_in"), in_channels, ch, 3)
    cin = ch
    for i, mult in enumerate(ch_mult):
        cout = ch * mult
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", ("encoder", "down", i, "block", j), cin if j == 0 else cout, cout)
        if i != levels - 1:
            conv_(f"encoder.down.{i}.downsample.conv", ("encoder", "down", i, "downsample", "conv"), cout, cout, 3)
        cin = cout
    mid("encoder.mid", ("encoder", "mid"), cin)
    norm_("encoder.norm_out", ("encoder", "norm_out"), cin)
    conv_("encoder.conv_out", ("encoder", "conv_out"), cin, 2 * z_channels, 3)
    conv_("quant_conv", ("quant_conv",), 2 * z_channels, 2 * z_channels, 1)
    conv_("post_quant_conv", ("post_quant_conv",), z_channels, z_channels, 1)
    # decoder: conv_in, mid, levels top-down of num_res_blocks + 1 resnets (+ upsample but level 0), out
    cin = ch * ch_mult[-1]
    conv_("decoder.conv_in", ("decoder", "conv_in"), z_channels, cin, 3)
    mid("decoder.mid", ("decoder", "mid"), cin)
    for i in reversed(range(levels)):
        cout = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", ("decoder", "up", i, "block", j), cin if j == 0 else cout, cout)
        if i != 0:
            conv_(f"decoder.up.{i}.upsample.conv", ("decoder", "up", i, "upsample", "conv"), cout, cout, 3)
        cin = cout
    norm_("decoder.norm_out", ("decoder", "norm_out"), cin)
    conv_("decoder.conv_out", ("decoder", "conv_out"), cin, out_channels, 3)
    return rules


# ---------------------------------------------------------------------------
# Configs and models.
# ---------------------------------------------------------------------------


def tokenizer_run_config(cfg, modality: Modality):
    """The tokenizer-run config for ``modality``: the config's modalities, official tokenizer sizes
    unless ``cfg.tokenizer`` says otherwise, and the release's regression loss for class maps."""
    out = with_defaults(cfg)
    out.task = "tokenizer"
    out.tokenizer.modality = modality.name
    out.tokenizer.categorical_loss = "regression"  # how the release trained its one-hot tokenizers
    return out


def rules_for(tcfg, modality: Modality) -> list[Rule]:
    channels = modality.pixel_shape[0]
    z = tcfg.z_channels or modality.latent_channels
    return tokenizer_rules(channels, channels, tcfg.ch, tuple(tcfg.ch_mult), tcfg.num_res_blocks, z)


def _abstract_autoencoder(tcfg, modality):
    return parallel.abstract_model(lambda: autoencoder_from_config(tcfg, modality, nnx.Rngs(0)))


def convert_tokenizer(state_dict: Mapping, tcfg, modality: Modality, source: str = "state dict") -> dict:
    """Release autoencoder state dict -> ``AutoencoderKL`` parameters (nested pure dict, float32)."""
    rules = rules_for(tcfg, modality)
    check_table(rules, nnx.to_pure_dict(nnx.state(_abstract_autoencoder(tcfg, modality), nnx.Param)), "tokenizer")
    hints = []
    if "encoder.conv_in.weight" in state_dict and len(state_dict["encoder.conv_in.weight"].shape) == 4:
        bands = state_dict["encoder.conv_in.weight"].shape[1]
        if bands != modality.pixel_shape[0]:
            hints.append(f"the autoencoder takes {bands} input channels but {modality.name} has "
                         f"{modality.pixel_shape[0]}: is this {modality.name}'s autoencoder?")
    what = (f"{source} into the {modality.name} tokenizer (ch {tcfg.ch}, ch_mult {list(tcfg.ch_mult)}, "
            f"{tcfg.num_res_blocks} res blocks)")
    return to_nnx(rules, state_dict, what, hints)


def tokenizer_to_state_dict(params: Mapping, tcfg, modality: Modality) -> dict[str, np.ndarray]:
    """``AutoencoderKL`` parameters -> the release's state dict (numpy arrays)."""
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params)
    return to_state_dict(rules_for(tcfg, modality), params, f"{modality.name} tokenizer into the release's layout")


def autoencoder_with(tcfg, modality: Modality, params: Mapping):
    """An ``AutoencoderKL`` holding ``params`` (built from shapes, then filled)."""
    graphdef, state = nnx.split(_abstract_autoencoder(tcfg, modality), nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, dict(params)))
    return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def find_tokenizer_files(registry: Registry, root, names=None) -> dict[str, epath.Path]:
    """``root/<modality>.pth`` or the single ``.pth`` in ``root/<modality>/``, for every image modality.

    Any modality without exactly one file is an error listing what was looked for.
    """
    root = epath.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--tokenizers {root}: no such directory")
    wanted = [m.name for m in registry.spatial] if not names else [registry[n].name for n in names]
    found, lines = {}, []
    for name in wanted:
        candidates = [root / f"{name}.pth"] if (root / f"{name}.pth").exists() else []
        if (root / name).is_dir():
            candidates += sorted(p for p in (root / name).iterdir() if p.name.endswith(".pth"))
        if len(candidates) == 1:
            found[name] = candidates[0]
        else:
            lines.append(f"{name}: {'several files: ' + ', '.join(map(str, candidates)) if candidates else 'no file'} "
                         f"(expected {root / name}.pth or one .pth in {root / name}/)")
    if lines:
        raise ConversionError(f"tokenizer files in {root}:\n  " + "\n  ".join(lines) +
                              "\n  (link the release's models/vae/<dir>/model-50-ema.pth under these names)")
    return found


def tokenizer_run_model(tcfg_full, modality: Modality, params: Mapping):
    """The tokenizer-run model (``TokenizerWithDisc``) with ``params`` as its autoencoder.

    Built from shapes; only the parts the release does not ship (the
    discriminator, the loss's log-variance) are initialised, in one jitted
    call from which the autoencoder's initialisation is dead code.
    """
    create = lambda: tokenizer_model_from_config(tcfg_full.tokenizer, modality, nnx.Rngs(tcfg_full.seed))  # noqa: E731
    graphdef, state = nnx.split(parallel.abstract_model(create), nnx.Param)

    def fresh_rest():
        with nnx.use_eager_sharding(False):
            pure = nnx.to_pure_dict(nnx.state(create(), nnx.Param))
        return {k: v for k, v in pure.items() if k != "autoencoder"}

    pure = dict(jax.jit(fresh_rest)(), autoencoder=jax.tree.map(jax.numpy.asarray, dict(params)))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def write_tokenizer_run(run_dir, tcfg_full, modality: Modality, params: Mapping) -> epath.Path:
    """A tokenizer run at step 0 whose autoencoder holds ``params``, plus the official scale factor."""
    if checkpoint.latest_step(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints; choose an empty --out directory")
    export_tokenizer(os.fspath(run_dir), tcfg_full, tokenizer_run_model(tcfg_full, modality, params))
    write_scale_factor(run_dir, {"modality": modality.name, "scale_factor": float(modality.scale_factor),
                                 "source": "release (official value)", "step": 0})
    return epath.Path(run_dir)


def tokenizer_jobs(cfg, root, out, names=None) -> list[Job]:
    """One job per image modality's autoencoder, into ``out/tokenizers/<modality>/``.

    ``root`` is a directory searched by ``find_tokenizer_files`` or a {modality: file} mapping.
    """
    registry = registry_from_config(cfg)
    files = ({name: epath.Path(path) for name, path in root.items()} if isinstance(root, Mapping)
             else find_tokenizer_files(registry, root, names))
    jobs = []
    for name, path in files.items():
        m = registry[name]
        run_cfg, target = tokenizer_run_config(cfg, m), epath.Path(out) / "tokenizers" / name
        jobs.append(Job(f"tokenizer {name}", path, target,
                        functools.partial(convert_tokenizer, tcfg=run_cfg.tokenizer, modality=m, source=str(path)),
                        functools.partial(write_tokenizer_run, target, run_cfg, m)))
    return jobs


def convert_tokenizer_dir(cfg, root, out, names=None) -> dict[str, epath.Path]:
    """Convert every image modality's autoencoder under ``root`` into ``out/tokenizers/<modality>/``."""
    return {job.label.split()[-1]: job.write(job.convert(load_torch_state_dict(job.source)))
            for job in tokenizer_jobs(cfg, root, out, names)}
