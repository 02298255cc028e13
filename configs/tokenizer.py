"""One modality tokenizer at the official size (SPEC §3), on pixel shards.

python -m copgen_jax.main --config=configs/tokenizer.py --config.tokenizer.modality=DEM_DEM \
    --config.data.shards=DIR --workdir=RUN/tokenizers/DEM_DEM
"""
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.task = "tokenizer"
    # The release's AdamW (PyTorch defaults besides lr): lr 5e-6 decaying as
    # (1 - step / 500k)^0.95 to a floor of 1e-6, no warm-up, batch 16 on one GPU.
    c.optim.lr = 5e-6
    c.optim.schedule = "polynomial"
    c.optim.end_lr = 1e-6
    c.optim.power = 0.95
    c.optim.decay_steps = 500_000
    c.optim.warmup_steps = 0
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.weight_decay = 0.01
    # The release's EMA is 0.995 applied every 10 steps; per step that is 0.995 ** 0.1.
    c.optim.ema_rate = 0.9995
    c.train.global_batch = 16
    c.train.log_every = 200
    c.train.checkpoint_every = 10_000
    c.data.source = "shards"  # pixel shards (copgen_jax.data.pixels); "random" for a smoke run
    return c
