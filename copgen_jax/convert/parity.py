"""Numerical parity with the release's PyTorch modules (``--check-parity``).

Builds the release's network from the same config, loads the same ``.pth``
into it and into copgen_jax, runs both on the same random inputs and prints
per modality the relative error ``max|jax - torch| / max|torch|``. Passes
(exit 0) only when every error is within the tolerance (1e-4, float32).

The release must be importable (its ``libs`` package on PYTHONPATH); it is
never bundled with copgen_jax.
"""
from __future__ import annotations

import importlib
import sys

import numpy as np

from copgen_jax.convert.backbone import BackboneFn, convert_backbone
from copgen_jax.convert.torch_io import load_torch_state_dict
from copgen_jax.modalities import Registry, registry_from_config

RELEASE_URL = "https://github.com/miquel-espinosa/COP-GEN"
HOW_TO = (f"make the COP-GEN release importable: git clone {RELEASE_URL} /path/to/COP-GEN, "
          f"pip install torch einops, then run with PYTHONPATH=/path/to/COP-GEN "
          f"(the check imports libs.copgen_multi_post_ln and libs.autoencoder from it)")


class ReleaseNotImportable(ImportError):
    pass


def import_release(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ReleaseNotImportable(f"cannot import {module} ({e}); {HOW_TO}") from e


def release_backbone_kwargs(cfg, registry: Registry) -> dict:
    """The release's ``COPGEN(**kwargs)`` for a config (its ``config.nnet`` minus ``name``)."""
    import ml_collections
    modalities = ml_collections.ConfigDict({
        m.name: {"modality_type": "scalar" if m.is_scalar else "image",
                 "latent_input_resolution": tuple(m.latent_shape[1:])} for m in registry})
    mc = cfg.model
    return dict(img_sizes={m.name: m.latent_shape[1] for m in registry},
                in_chans={m.name: m.latent_shape[0] for m in registry},
                patch_size={m.name: m.patch for m in registry},
                embed_dim=mc.hidden, depth=mc.depth, num_heads=mc.heads, mlp_ratio=mc.mlp_ratio,
                qkv_bias=False, mlp_time_embed=False, modalities=modalities, use_checkpoint=False)


def parity_inputs(registry: Registry, seed: int, batch: int, num_steps: int = 1000):
    """Random latents and per-modality timesteps; odd draws hold half the modalities clean (t = 0)."""
    rng = np.random.default_rng(seed)
    latents = {m.name: rng.standard_normal((batch, *m.latent_shape)).astype(np.float32) for m in registry}
    timesteps = {m.name: rng.integers(0, num_steps + 1, batch).astype(np.float32) for m in registry}
    if seed % 2:
        for m in list(registry)[::2]:
            timesteps[m.name][:] = 0.0
    return latents, timesteps


def relative_error(ours, theirs) -> float:
    theirs = np.asarray(theirs, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / max(np.abs(theirs).max(), 1e-12))


def backbone_errors(cfg, state_dict, *, seeds=3, batch=2) -> dict[str, float]:
    """Largest relative error per modality over ``seeds`` input draws."""
    import torch
    registry = registry_from_config(cfg)
    release = import_release("libs.copgen_multi_post_ln")
    net = release.COPGEN(**release_backbone_kwargs(cfg, registry))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    net.eval()
    ours = BackboneFn(cfg, registry, convert_backbone(state_dict, cfg, registry))
    worst = {m.name: 0.0 for m in registry}
    for seed in range(seeds):
        latents, timesteps = parity_inputs(registry, seed, batch)
        with torch.no_grad():
            theirs = net([torch.from_numpy(latents[n]) for n in registry.names],
                         [torch.from_numpy(timesteps[n]) for n in registry.names])
        mine = ours(latents, timesteps)
        for name, t in zip(registry.names, theirs):
            worst[name] = max(worst[name], relative_error(mine[name], t.numpy()))
    return worst


def tokenizer_errors(cfg, root, *, seeds=3, batch=2) -> dict[str, dict[str, float]]:
    """Per image modality: largest relative errors of the encoder's mean and log-variance and of the decoder.

    The release's ``decode`` takes scaled latents (it divides by the scale
    factor); copgen_jax's takes unscaled ones, so both see the same latent.
    """
    import jax
    import torch
    from copgen_jax.convert.tokenizer import (autoencoder_with, convert_tokenizer, find_tokenizer_files,
                                              tokenizer_run_config)
    from copgen_jax.models.tokenizer import LOGVAR_MAX, LOGVAR_MIN
    release = import_release("libs.autoencoder")
    registry = registry_from_config(cfg)
    out = {}
    for name, path in find_tokenizer_files(registry, root).items():
        m = registry[name]
        tcfg = tokenizer_run_config(cfg, m).tokenizer
        channels, z = m.pixel_shape[0], m.latent_channels
        ddconfig = dict(double_z=True, z_channels=z, resolution=m.size, in_channels=channels, out_ch=channels,
                        ch=tcfg.ch, ch_mult=list(tcfg.ch_mult), num_res_blocks=tcfg.num_res_blocks,
                        attn_resolutions=[], dropout=0.0)
        theirs = release.FrozenAutoencoderKL(ddconfig, z, str(path), m.scale_factor)
        ae = autoencoder_with(tcfg, m, convert_tokenizer(load_torch_state_dict(path), tcfg, m, str(path)))
        encode, decode = jax.jit(lambda x: ae.encode(x)), jax.jit(lambda z: ae.decode(z))
        worst = {"encode mean": 0.0, "encode logvar": 0.0, "decode": 0.0}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            x = rng.uniform(-1, 1, (batch, *m.pixel_shape)).astype(np.float32)
            latent = (rng.standard_normal((batch, *m.latent_shape)) * m.scale_factor).astype(np.float32)
            with torch.no_grad():
                mean, logvar = theirs.encode_moments(torch.from_numpy(x)).chunk(2, dim=1)
                pixels = theirs.decode(torch.from_numpy(latent))
            my_mean, my_logvar = encode(x)
            worst["encode mean"] = max(worst["encode mean"], relative_error(my_mean, mean.numpy()))
            worst["encode logvar"] = max(worst["encode logvar"], relative_error(
                my_logvar, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX).numpy()))  # the release clamps when sampling
            worst["decode"] = max(worst["decode"], relative_error(decode(latent / m.scale_factor), pixels.numpy()))
        out[name] = worst
    return out


def report(title: str, errors: dict[str, float], tolerance: float, per: str = "modality") -> bool:
    print(f"{title}: max relative error per {per} (tolerance {tolerance:g})")
    for name, err in errors.items():
        print(f"  {name:40s} {err:.3e}  {'ok' if err <= tolerance else 'FAIL'}")
    return all(e <= tolerance for e in errors.values())


def run(cfg, backbone, tokenizers, *, seeds=3, batch=2, tolerance=1e-4) -> int:
    """The ``--check-parity`` command; returns the exit status."""
    if backbone is None and tokenizers is None:
        print("error: --check-parity needs --backbone PATH.pth and/or --tokenizers DIR", file=sys.stderr)
        return 2
    try:
        ok = True
        if backbone is not None:
            errors = backbone_errors(cfg, load_torch_state_dict(backbone), seeds=seeds, batch=batch)
            ok &= report(f"backbone {backbone}", errors, tolerance)
        if tokenizers is not None:
            for name, errors in tokenizer_errors(cfg, tokenizers, seeds=seeds, batch=batch).items():
                ok &= report(f"tokenizer {name}", errors, tolerance, per="output")
    except ReleaseNotImportable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print("parity: PASS" if ok else "parity: FAIL")
    return 0 if ok else 1
