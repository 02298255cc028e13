"""The embedded default: the whole chain on a CPU in minutes.

synthetic world -> pixel shards -> tokenizers -> latent shards -> backbone ->
any-to-any samples -> report. Each stage is resumable and skipped when done.
"""
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.task = "pipeline"
    c.modalities.names = ("3d_cartesian_lat_lon", "DEM_DEM", "LULC_LULC", "S1RTC_vh_vv",
                          "S2L2A_B02_B03_B04_B08", "mean_timestamps")
    c.modalities.pixel_scale = 4  # 192 -> 48 px at 40 m; DEM 64 -> 16 px
    c.modalities.downsample = 4  # 48 px -> 12x12 latent
    c.modalities.patch = 2
    c.modalities.latent_channels = 4
    c.model.hidden, c.model.depth, c.model.heads = 128, 4, 4
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.ema_rate = 0.999
    c.diffusion.modality_dropout = 0.15
    c.train.global_batch = 32
    c.train.steps = 3000
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    return c
