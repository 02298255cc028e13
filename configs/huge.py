"""COP-GEN huge: D=1536, depth 30, 24 heads (951,274,306 params)."""
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.model.hidden, c.model.depth, c.model.heads = 1536, 30, 24
    return c
