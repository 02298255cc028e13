"""COP-GEN base: D=1024, depth 20, 16 heads, all 12 modalities (286,986,562 params)."""
from copgen_jax.defaults import default_config


def get_config():
    return default_config()
