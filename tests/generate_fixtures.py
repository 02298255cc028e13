"""A tiny run directory shared by the generation tests (built once per pytest session).

configs/test.py with land cover and the date added and presence masks on (modality
dropout), two backbone steps, randomly initialised tokenizers; DEM carries a
scale_factor.json of 0.5 (the others use the registry's factors).
"""
import os

import jax

from configs import test as test_config, tokenizer_test
from copgen_jax import parallel, tiny_run
from copgen_jax.tokenizer_store import write_scale_factor

NAMES = ("3d_cartesian_lat_lon", "DEM_DEM", "LULC_LULC", "S2L2A_B02_B03_B04_B08", "mean_timestamps")
DEM, LULC, S2, LATLON, DATE = "DEM_DEM", "LULC_LULC", "S2L2A_B02_B03_B04_B08", "3d_cartesian_lat_lon", "mean_timestamps"


def tiny_config(names=NAMES):
    """configs/test.py over ``names``, with presence masks, two training steps."""
    cfg = test_config.get_config()
    cfg.modalities.names = names
    cfg.diffusion.modality_dropout = 0.25
    cfg.train.steps = cfg.train.checkpoint_every = cfg.train.log_every = 2
    return cfg


def tiny_run_dir(tmp_path_factory) -> str:
    path = os.path.join(tmp_path_factory.getbasetemp(), "copgen_tiny_run")
    cfg = tiny_config()
    one_device = parallel.make_mesh(cfg.mesh, jax.devices()[:1])  # compiles faster than 8 forced devices
    tiny_run.make_run(path, cfg, tokenizer_test.get_config(), scale_factors=False, mesh=one_device)
    write_scale_factor(os.path.join(path, "tokenizers", DEM), {"modality": DEM, "scale_factor": 0.5})
    return path
