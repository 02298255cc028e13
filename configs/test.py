"""Tiny config for tests: three small modalities, width 64, depth 2; seconds on a CPU."""
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.modalities.names = ("3d_cartesian_lat_lon", "DEM_DEM", "S2L2A_B02_B03_B04_B08")
    c.modalities.pixel_scale = 4  # 192 -> 48 px, DEM 64 -> 16 px
    c.modalities.downsample = 4  # -> S2 12x12 latent, DEM 4x4
    c.modalities.patch = 2
    c.modalities.latent_channels = 4
    c.model.hidden, c.model.depth, c.model.heads = 64, 2, 4
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 10
    c.optim.ema_rate = 0.99
    c.train.global_batch = 8
    c.train.steps = 20
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.async_checkpoint = False
    return c
