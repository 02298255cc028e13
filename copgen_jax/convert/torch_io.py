"""Reading the release's ``.pth`` state dicts; PyTorch is needed for this only (the ``torch`` extra), on CPU."""
from __future__ import annotations

from typing import Mapping

import numpy as np
from etils import epath

from copgen_jax.convert.rules import ConversionError


def torch_module():
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading PyTorch checkpoints needs torch (CPU is enough): "
                          "pip install 'copgen_jax[torch]' or pip install torch") from e
    return torch


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
    """A ``.pth`` state dict as float32 numpy arrays, read on the CPU."""
    torch = torch_module()
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
