"""The tiny run and its model, shared by the generation tests of one module."""
import pytest

from copgen_jax import CopGen
from tests.fixtures.sampling_run import tiny_run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def model(run):
    return CopGen.load(run)
