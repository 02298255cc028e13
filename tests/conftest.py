"""Test-wide setup: 8 forced host devices for sharding tests, absl flags parsed for Grain."""
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

# grain 0.2.18 reads absl flags and raises UnparsedFlagAccessError otherwise.
flags.FLAGS.mark_as_parsed()

from tests.fixtures.latent_shards import latent_dir  # noqa: E402,F401 - a fixture shared by data and remote tests
