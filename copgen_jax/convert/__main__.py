"""Released COP-GEN PyTorch weights -> a copgen_jax run directory, or a parity check against the release.

    python -m copgen_jax.convert --from-hub [--revision R] [--vaes-revision R] [--hub-cache DIR] --out DIR
    python -m copgen_jax.convert --backbone nnet_ema.pth [--tokenizers DIR] \\
        --config configs/base.py --out DIR
    python -m copgen_jax.convert --check-parity --backbone nnet_ema.pth \\
        [--tokenizers DIR] --config configs/base.py
"""
from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags

from copgen_jax import flagparse
from copgen_jax.convert.files import convert_files
from copgen_jax.convert.rules import ConversionError


FLAGS = flagparse.new()
config_flags.DEFINE_config_file("config", None, "Config file the weights belong to "
                                "(configs/base.py for the released base model; the default with --from-hub).",
                                flag_values=FLAGS)
flags.DEFINE_bool("from-hub", False, "Download the released backbone and autoencoders from the Hugging Face Hub "
                  "(cached, resumable) and convert them.", flag_values=FLAGS)
flags.DEFINE_string("revision", "main", "--from-hub: branch, tag or commit of the backbone repository.",
                    flag_values=FLAGS)
flags.DEFINE_string("vaes-revision", "main", "--from-hub: branch, tag or commit of the autoencoder repository.",
                    flag_values=FLAGS)
flags.DEFINE_string("hub-cache", None, "--from-hub: Hugging Face cache directory (default: HF_HOME's).",
                    flag_values=FLAGS)
flags.DEFINE_string("backbone", None, "The release's backbone state dict (nnet_ema.pth).", flag_values=FLAGS)
flags.DEFINE_string("tokenizers", None, "Directory of per-modality autoencoder state dicts: "
                    "<modality>.pth or <modality>/model-50-ema.pth.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output run directory (conversion).", flag_values=FLAGS)
flags.DEFINE_bool("check-parity", False, "Compare with the release's PyTorch modules instead of "
                  "converting; needs the release on PYTHONPATH.", flag_values=FLAGS)
flags.DEFINE_integer("seeds", 3, "Parity: number of random input draws.", flag_values=FLAGS)
flags.DEFINE_integer("batch", 2, "Parity: batch size per draw.", flag_values=FLAGS)
flags.DEFINE_float("tolerance", 1e-4, "Parity: largest accepted relative error.", flag_values=FLAGS)
PROG = "python -m copgen_jax.convert"


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    if args.from_hub:
        return _from_hub(args)
    if args.config is None:
        flagparse.fail(FLAGS, PROG, "--config=configs/NAME.py is required (the config the weights were trained with)")
    try:
        if args.check_parity:
            from copgen_jax.convert import parity
            return parity.run(args.config, args.backbone, args.tokenizers, seeds=args.seeds, batch=args.batch,
                              tolerance=args.tolerance)
        if not args.out:
            flagparse.fail(FLAGS, PROG, "--out DIR is required to convert")
        convert_files(args.config, args.backbone, args.tokenizers, args.out)
    except (ConversionError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _from_hub(args) -> int:
    from copgen_jax.convert.released import convert_released
    from copgen_jax.defaults import default_config
    from copgen_jax.hub import HubError
    if args.backbone or args.tokenizers or args.check_parity:
        flagparse.fail(FLAGS, PROG, "--from-hub takes no --backbone, --tokenizers or --check-parity")
    if not args.out:
        flagparse.fail(FLAGS, PROG, "--out DIR is required to convert")
    try:
        convert_released(args.config or default_config(), args.out, args.revision, args.vaes_revision,
                         args.hub_cache)
    except (HubError, ConversionError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted run: {args.out} (sample with CopGen.load({args.out!r}) or copgen-sample --run {args.out})",
          flush=True)
    return 0


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    sys.exit(main())
