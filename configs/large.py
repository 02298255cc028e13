"""COP-GEN large: D=1152, depth 28, 16 heads (501,092,674 params)."""
from copgen_jax.defaults import default_config


def get_config():
    c = default_config()
    c.model.hidden, c.model.depth = 1152, 28  # 16 heads, as the base
    return c
