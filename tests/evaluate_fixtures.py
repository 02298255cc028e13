"""A tiny run directory with held-out synthetic pixel shards, shared by the evaluation tests.

configs/test.py with land cover, S1 and the date added, presence masks on (modality dropout),
two backbone steps and randomly initialised tokenizers; ``data/pixels`` holds a synthetic world
of two cells (one held out) of one footprint each, seen on three dates. Built once per session.
"""
import os

import generate_fixtures
from configs import tokenizer_test
from copgen_jax import tiny_run
from copgen_jax.modalities import registry_from_config

NAMES = ("3d_cartesian_lat_lon", "DEM_DEM", "LULC_LULC", "S1RTC_vh_vv", "S2L2A_B02_B03_B04_B08",
         "mean_timestamps")
OBSERVATIONS = 3


def tiny_config():
    return generate_fixtures.tiny_config(NAMES)


def eval_run_dir(tmp_path_factory) -> str:
    from datasets import build
    path = os.path.join(tmp_path_factory.getbasetemp(), "copgen_eval_run")
    cfg = tiny_config()
    tiny_run.make_run(path, cfg, tokenizer_test.get_config(), scale_factors=False)
    pixels = os.path.join(path, "data", "pixels")
    if not os.path.exists(os.path.join(pixels, "manifest.json")):
        build.build("synthetic", pixels, registry_from_config(cfg), cells=2, observations=OBSERVATIONS,
                    footprints_per_side=1, progress=False)
    return path


def baseline_run_dir(run: str, steps: int = 2) -> str:
    """The run's deterministic baseline, trained ``steps`` steps (kept for the session)."""
    from copgen_jax.baseline import train_baseline
    return train_baseline(run, steps)
