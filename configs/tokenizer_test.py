"""Tiny tokenizer for tests: the registry of configs/test.py, width 16, seconds on a CPU."""
from configs import test as backbone_test
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.task = "tokenizer"
    # The registry of configs/test.py: 48 px S2, 16 px DEM, downsample 4, latent channels 4.
    c.modalities = backbone_test.get_config().modalities
    c.tokenizer.modality = "S2L2A_B02_B03_B04_B08"
    c.tokenizer.ch = 16
    c.tokenizer.ch_mult = (1, 2, 2)  # two halvings = modalities.downsample 4
    c.tokenizer.num_res_blocks = 1
    c.tokenizer.disc_layers = 2
    c.tokenizer.disc_ndf = 8
    c.tokenizer.disc_start = 5
    c.tokenizer.scale_factor_batches = 2
    c.tokenizer.preview_count = 2
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 5
    c.optim.ema_rate = 0.9
    c.train.global_batch = 8
    c.train.steps = 10
    c.train.log_every = 5
    c.train.checkpoint_every = 5
    c.train.async_checkpoint = False
    c.data.source = "random"
    c.data.num_examples = 32
    return c
