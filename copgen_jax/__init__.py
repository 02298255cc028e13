"""copgen_jax: COP-GEN in JAX, any-to-any generation of co-registered Copernicus modalities.

``from copgen_jax import CopGen`` loads the generation API on first use only, so
``import copgen_jax`` stays light (no JAX import).
"""
__all__ = ["CopGen", "Generation"]


def __getattr__(name):
    if name in __all__:
        from copgen_jax.inference import copgen
        return getattr(copgen, name)
    raise AttributeError(f"module 'copgen_jax' has no attribute {name!r}")
