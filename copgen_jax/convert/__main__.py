"""Released COP-GEN PyTorch weights -> a copgen_jax run directory, or a parity check against the release.

    python -m copgen_jax.convert --backbone nnet_ema.pth [--tokenizers DIR] \\
        --config configs/base.py --out DIR
    python -m copgen_jax.convert --check-parity --backbone nnet_ema.pth \\
        [--tokenizers DIR] --config configs/base.py
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from copgen_jax.convert.files import convert_files
from copgen_jax.convert.rules import ConversionError


def _define_flags():
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
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    cfg = flag_values["config"].value
    if cfg is None:
        raise app.UsageError("--config=configs/NAME.py is required (the config the weights were trained with)")
    backbone, tokenizers = flag_values["backbone"].value, flag_values["tokenizers"].value
    try:
        if flag_values["parity"].value:
            from copgen_jax.convert import parity
            return parity.run(cfg, backbone, tokenizers, seeds=flag_values["seeds"].value,
                                      batch=flag_values["batch"].value, tolerance=flag_values["tolerance"].value)
        if not flag_values["out"].value:
            raise app.UsageError("--out DIR is required to convert")
        convert_files(cfg, backbone, tokenizers, flag_values["out"].value)
    except (ConversionError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    _flag_values = _define_flags()
    logging.getLogger().setLevel(logging.INFO)
    app.run(lambda argv: sys.exit(main(argv, _flag_values)))
