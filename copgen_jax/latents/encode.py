"""Pixel shards -> latent-moment shards with the trained modality tokenizers.

    python -m copgen_jax.latents.encode --tokenizers RUN/tokenizers --pixels PIXELS --out LATENTS

``--tokenizers`` holds one tokenizer run per image/categorical modality
(``<dir>/<modality>/``, see ``copgen_jax.latents.store``). For every record
of the pixel set, each present spatial modality is encoded to its posterior
moments (mean, logvar) — deterministic, no sampling; the backbone's input
pipeline draws a fresh ``z`` at every read — scalars are passed through, and
presence flags, split and georeferencing are kept. Output shard ``g`` of a
split holds the records of pixel shard ``g`` in order; each shard is written
atomically and finished ones are skipped on a rerun (``input_pipeline.write_latent_shards``).

Before encoding, every tokenizer lacking ``scale_factor.json`` gets one,
computed from ``--scale_batches`` batches of the pixel set's train split. The
output manifest's ``registry`` block carries those scale factors and
``tokenizers.json`` names the runs and checkpoint steps used; resuming into the
same ``--out`` with different tokenizers is refused.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

import numpy as np
from absl import flags

from copgen_jax import checkpoint, flagparse, storage
from copgen_jax.data import input_pipeline
from copgen_jax.data import shards
from copgen_jax.modalities import Registry, registry_from_config
from copgen_jax.data.pixels import pixel_batches
from copgen_jax.latents.store import (Tokenizer, apply_scale_info, compute_scale_factor, load_tokenizer,
                                       write_scale_factor)

TOKENIZERS_FILE = "tokenizers.json"


def load_tokenizers(tokenizers_dir: str, names) -> dict[str, Tokenizer]:
    """The tokenizer of each modality in ``names`` from ``<tokenizers_dir>/<name>/``."""
    missing = [n for n in names if not (storage.path(tokenizers_dir) / n / "config.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"{tokenizers_dir}: no tokenizer run for {', '.join(missing)}; train one per modality with "
            f"`python -m copgen_jax.main --config=configs/tokenizer.py --config.tokenizer.modality=NAME "
            f"--workdir={tokenizers_dir}/NAME`")
    toks = {n: load_tokenizer(os.fspath(storage.path(tokenizers_dir) / n)) for n in names}
    for name, tok in toks.items():
        if tok.modality.name != name:
            raise ValueError(f"{tok.run_dir} trains {tok.modality.name}, not {name}: move it to "
                             f"{tokenizers_dir}/{tok.modality.name}")
    return toks


def encoding_registry(tokenizers_dir: str, pixel_manifest: dict, pixel_dir: str) -> Registry:
    """The pixel set's modalities, as the tokenizers' configs define them, checked against its manifest."""
    runs = sorted(d.name for d in storage.path(tokenizers_dir).iterdir() if (d / "config.json").exists())
    if not runs:
        raise FileNotFoundError(f"{tokenizers_dir}: no tokenizer runs (<dir>/<modality>/config.json) found")
    source = registry_from_config(checkpoint.load_config(storage.path(tokenizers_dir) / runs[0]))
    names = sorted(pixel_manifest["registry"])
    unknown = [n for n in names if n not in source]
    if unknown:
        raise ValueError(f"{pixel_dir} holds {', '.join(unknown)}, which the tokenizers' registry lacks; "
                         "train them with modalities.names covering the pixel set")
    reg = source.subset(names)
    for m in reg:
        built = tuple(pixel_manifest["registry"][m.name]["pixel_shape"])
        if built != m.pixel_shape:
            raise ValueError(f"{m.name}: pixel shards hold {built} but the tokenizers expect {m.pixel_shape}; "
                             "use tokenizers trained with the registry the shards were built with")
    return reg


def _check_latents(toks: dict[str, Tokenizer], reg: Registry) -> None:
    for name, tok in toks.items():
        if tok.modality.latent_shape != reg[name].latent_shape or tok.modality.pixel_shape != reg[name].pixel_shape:
            raise ValueError(f"{tok.run_dir}: {name} maps {tok.modality.pixel_shape} -> {tok.modality.latent_shape}, "
                             f"the other tokenizers' registry {reg[name].pixel_shape} -> {reg[name].latent_shape}; "
                             "train every tokenizer with the same modalities config")


def ensure_scale_factors(toks: dict[str, Tokenizer], pixel_dir: str, *, batches: int | None = None,
                         batch_size: int = 32) -> dict[str, float]:
    """Scale factor of every tokenizer, computing and storing the missing ones from the train split."""
    out = {}
    for name, tok in toks.items():
        if tok.scale_factor is None:
            n = batches or tok.cfg.tokenizer.scale_factor_batches
            info = compute_scale_factor(tok, pixel_batches(pixel_dir, tok.modality, batch_size, "train", n),
                                        seed=tok.cfg.seed)
            write_scale_factor(tok.run_dir, info)
            apply_scale_info(tok, info)
            logging.info("%s: scale factor %.6f from %d examples", name, tok.scale_factor, info["examples"])
        out[name] = tok.scale_factor
    return out


def make_encoder(toks: dict[str, Tokenizer], batch_size: int):
    """``encode(pixels, present) -> {name: (mean, logvar)}`` for ``input_pipeline.write_latent_shards``.

    Batches are padded to ``batch_size`` so each modality compiles once; a
    modality absent from the whole batch is not run.
    """
    fns = {name: tok.encode_fn() for name, tok in toks.items()}

    def encode(pixels, present):
        out = {}
        for name, fn in fns.items():
            x = np.asarray(pixels[name], np.float32)
            if not np.any(present[name]):
                continue
            n = len(x)
            if n < batch_size:
                x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), np.float32)])
            mean, logvar = fn(x)
            out[name] = (np.asarray(mean)[:n], np.asarray(logvar)[:n])
        return out
    return encode


def _pin_tokenizers(out_dir: str, toks: dict[str, Tokenizer]) -> dict:
    """Record the tokenizers behind ``out_dir``; refuse to resume with others."""
    pinned = {n: {"run": os.fspath(storage.absolute(t.run_dir)), "step": t.step, "scale_factor": t.scale_factor}
              for n, t in sorted(toks.items())}
    path = storage.path(out_dir) / TOKENIZERS_FILE
    if path.exists():
        old = storage.read_json(path)
        if old != pinned:
            raise shards.BuildError(
                f"{out_dir} was encoded with other tokenizers ({path}); resume with the same runs and "
                "checkpoints, or encode into a fresh --out directory")
    else:
        storage.path(out_dir).mkdir(parents=True, exist_ok=True)
        shards.write_json(path, pinned)
    return pinned


def encode_shards(tokenizers_dir: str, pixel_dir: str, out_dir: str, *, batch_size: int = 32,
                  scale_batches: int | None = None, progress: bool = True) -> dict:
    """Encode the pixel shard set ``pixel_dir`` into ``out_dir``; returns the latent manifest."""
    manifest = shards.load_manifest(pixel_dir)
    reg = encoding_registry(tokenizers_dir, manifest, pixel_dir)
    toks = load_tokenizers(tokenizers_dir, [m.name for m in reg.spatial])
    _check_latents(toks, reg)
    factors = ensure_scale_factors(toks, pixel_dir, batches=scale_batches, batch_size=batch_size)
    reg = Registry(dataclasses.replace(m, scale_factor=factors.get(m.name, m.scale_factor)) for m in reg)
    pinned = _pin_tokenizers(out_dir, toks)
    source = {"pixels": os.fspath(storage.absolute(pixel_dir)), "tokenizers": pinned}
    return input_pipeline.write_latent_shards(out_dir, reg, pixel_dir, make_encoder(toks, batch_size),
                                    batch_size=batch_size, progress=progress, source=source)


FLAGS = flagparse.new()
flags.DEFINE_string("tokenizers", None, "directory with one tokenizer run per modality", flag_values=FLAGS)
flags.DEFINE_string("pixels", None, "pixel shard set (directory with manifest.json)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output directory for the latent-moment shards", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "records per encoding batch", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("scale_batches", None, "train batches behind a missing scale factor "
                     "(default: tokenizer.scale_factor_batches)", flag_values=FLAGS)
flags.mark_flags_as_required(["tokenizers", "pixels", "out"], flag_values=FLAGS)


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog="python -m copgen_jax.latents.encode",
                           description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = encode_shards(args.tokenizers, args.pixels, args.out, batch_size=args.batch_size,
                             scale_batches=args.scale_batches)
    print(json.dumps({"out": args.out, "records": manifest["records"]}), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
