"""The embedded default: the whole chain on a CPU in minutes.

synthetic world -> pixel shards -> tokenizers -> latent shards -> backbone ->
any-to-any samples on held-out footprints -> report (PNG sheets, GeoTIFFs,
metrics JSON). Each stage is resumable and skipped when done. How these values
were chosen, and what they measured, is in docs/experiments.md.

Six modalities at 1/4 of their native resolution (S2/S1/land cover 48 px at
40 m, DEM 16 px at 120 m), so that everything trains on two CPU cores.
"""
import ml_collections

from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.task = "pipeline"
    c.modalities.names = ("3d_cartesian_lat_lon", "DEM_DEM", "LULC_LULC", "S1RTC_vh_vv",
                          "S2L2A_B02_B03_B04_B08", "mean_timestamps")
    c.modalities.pixel_scale = 4
    c.modalities.downsample = 4  # 48 px -> 12x12 latents, 36 tokens per image modality
    c.modalities.patch = 2
    c.modalities.latent_channels = 4
    # The 16 px DEM keeps a finer latent grid (8x8, 16 tokens of 480 m, as the official 64 px DEM
    # has): at 4x4 the backbone draws little from it.
    c.modalities.per_modality.DEM_DEM = dict(downsample=2)

    c.model.hidden, c.model.depth, c.model.heads = 128, 4, 4
    # Attention penalised by ground distance (docs/ARCHITECTURE.md): tokens find the other
    # modalities' tokens over their own ground from the start.
    c.model.ground_bias = 2.0
    # A short run: Adam's usual b1 (the release's 0.99 averages gradients over 100 of its 1,100
    # steps) and the rate decayed to 2e-5 by the last step.
    c.optim.lr = 2e-3
    c.optim.b1 = 0.9
    c.optim.warmup_steps = 200
    c.optim.schedule, c.optim.end_lr = "polynomial", 2e-5  # reached at the last step (optim.decay_steps 0)
    c.optim.ema_rate = 0.998
    c.diffusion.modality_dropout = 0.2  # trains every subset as a condition; absent modalities drop out
    c.diffusion.condition_rate = 0.3  # clean conditions at timestep 0, as sampling feeds them
    c.diffusion.prediction = "v"  # eps-prediction needs far longer runs before its samples are in range
    c.train.global_batch = 32
    c.train.steps = 1100
    c.train.log_every = 200
    c.train.checkpoint_every = 500
    c.data.shuffle_buffer = 512

    p = c.pipeline
    # Many places, one footprint and one date each: how land cover follows terrain and climate
    # is learnt across places, and held-out places are new climates. The held-out 5% are seen on
    # 4 dates each, for the stochastic benchmark's real spread.
    p.cells = 1024  # one footprint (pipeline.footprints_per_side) and one date (observations) each
    p.test_fraction, p.test_observations = 0.05, 4
    p.cells_per_shard = 16
    p.data_workers = 2  # processes writing the world and its shards
    p.tokenizer.model = ml_collections.ConfigDict(dict(
        ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4, disc_layers=0, scale_factor_batches=16,
        center_latents=True))  # zero-mean latent channels: short runs' samples keep the data's mean
    p.tokenizer.optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=50, ema_rate=0.99, b1=0.9, b2=0.99))
    p.tokenizer.train = ml_collections.ConfigDict(dict(global_batch=8, steps=500, log_every=100,
                                                       checkpoint_every=300, async_checkpoint=False))
    # 16 px DEM: one channel per norm group (grouped norms let its latent collapse in short runs;
    # the 48 px modalities need them to keep their brightness). log1p leaves a footprint's hills a
    # few thousandths of the DEM's unit range, so its tokenizer needs precision more than
    # capacity: a longer run (cheap at 16 px) with the rate decayed.
    p.tokenizer.per_modality = ml_collections.ConfigDict({"DEM_DEM": {
        "model": {"norm_groups": 16, "ch_mult": (1, 2)},
        "optim": {"schedule": "polynomial", "end_lr": 1e-5},
        "train": {"steps": 3600, "checkpoint_every": 900}}})
    # any-to-any tasks sampled on held-out footprints: "given+given->generated+generated"
    p.tasks = ("DEM_DEM+LULC_LULC->S2L2A_B02_B03_B04_B08",
               "S1RTC_vh_vv->S2L2A_B02_B03_B04_B08",
               "S2L2A_B02_B03_B04_B08->S1RTC_vh_vv",
               "3d_cartesian_lat_lon+DEM_DEM->LULC_LULC",
               "S2L2A_B02_B03_B04_B08->LULC_LULC+DEM_DEM")
    # The report samples without classifier-free guidance (pipeline.guidance 1): w = 2 pulls the
    # samples towards what the conditions imply but halves their spread given land cover while
    # their mean's error falls by a tenth (benchmarks/calibration.py), so its uncertainty maps
    # would claim a certainty the model does not have.
    return c
