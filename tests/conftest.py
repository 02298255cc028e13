"""Test-wide setup: 8 forced host devices for sharding tests, absl flags parsed for Grain."""
import os

import pytest

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

# grain 0.2.18 reads absl flags and raises UnparsedFlagAccessError otherwise.
flags.FLAGS.mark_as_parsed()

from tests.fixtures.latent_shards import latent_dir  # noqa: E402,F401 - a fixture shared by data and remote tests


@pytest.fixture(scope="session")
def release_cache(tmp_path_factory):
    """(a Hub cache holding the released model's two repositories, {repo: commit}); read it, never change it.

    Random weights of a small config (``tests.fixtures.released_hub``), shared by the tests of
    the download, the conversion and the paper's benchmark.
    """
    from tests.fixtures.released_hub import put_release, small_release_config
    cache = tmp_path_factory.mktemp("hub_cache")
    return str(cache), put_release(cache, small_release_config())


@pytest.fixture(scope="session")
def released_run(release_cache, tmp_path_factory):
    """The run ``python -m copgen_jax.convert --from-hub`` makes of ``release_cache``, offline; read-only."""
    from huggingface_hub import constants
    from copgen_jax.convert import __main__ as convert_cli
    root = tmp_path_factory.mktemp("released_run")
    config = root / "release_config.py"
    config.write_text("from tests.fixtures.released_hub import small_release_config as get_config\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        assert convert_cli.main(["--from-hub", f"--config={config}", f"--hub-cache={release_cache[0]}",
                                 f"--out={root / 'copgen_base'}"]) == 0
    return str(root / "copgen_base")
