"""The released model from the Hub in one command: a Hub-laid-out cache -> a run that samples.

The cache (``tests.fixtures.released_hub``) holds the backbone and autoencoder repositories
as huggingface_hub stores them; with the Hub offline, huggingface_hub itself resolves the
revisions and files from it, as after a real download.
"""
import json
import os
import pathlib

import numpy as np
import pytest

pytest.importorskip("torch")
hub_constants = pytest.importorskip("huggingface_hub.constants")

from copgen_jax import hub  # noqa: E402
from copgen_jax.convert import __main__ as convert_cli  # noqa: E402
from copgen_jax.convert.backbone import load_params, to_torch_state_dict  # noqa: E402
from copgen_jax.convert.released import RELEASE_RECORD  # noqa: E402
from copgen_jax.convert.torch_io import load_torch_state_dict  # noqa: E402
from copgen_jax import CopGen  # noqa: E402
from tests.fixtures.hub_cache import copy_cache, drop_file  # noqa: E402
from tests.fixtures.released_hub import small_release_config  # noqa: E402

CONFIG = "from tests.fixtures.released_hub import small_release_config as get_config\n"
S2, DEM = "S2L2A_B02_B03_B04_B08", "DEM_DEM"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read once, at import


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "release_config.py"
    path.write_text(CONFIG)
    return str(path)


def convert(config_file, cache, out, *extra):
    return convert_cli.main(["--from-hub", f"--config={config_file}", f"--hub-cache={cache}", f"--out={out}",
                             *extra])


def test_from_hub_converts_into_a_run_that_samples(release_cache, released_run, config_file, capsys):
    cache, commits = release_cache
    out = pathlib.Path(released_run)  # converted by the command, offline (tests/conftest.py)
    record = json.loads((out / RELEASE_RECORD).read_text())
    assert record["backbone"] == {"repo": hub.BACKBONE_REPO, "revision": "main",
                                  "commit": commits[hub.BACKBONE_REPO], "file": "500000_nnet_ema.pth"}
    assert record["autoencoders"]["commit"] == commits[hub.VAES_REPO]
    assert record["autoencoders"]["files"][S2] == f"S2L2A_192x192_B4_3_2_8_latent_8/{hub.VAE_FILE}"
    # The run's weights are the file's, exactly.
    snap = os.path.join(cache, "models--mespinosami--copgen-base", "snapshots", commits[hub.BACKBONE_REPO])
    released = load_torch_state_dict(os.path.join(snap, "500000_nnet_ema.pth"))
    cfg, registry, params = load_params(out)
    ours = to_torch_state_dict(params, cfg, registry, as_numpy=True)
    assert sorted(ours) == sorted(released)
    assert all(np.array_equal(ours[k], np.asarray(released[k])) for k in ours)
    assert sorted(os.listdir(out / "tokenizers")) == [DEM, "LULC_LULC", S2]
    model = CopGen.load(str(out))
    dem = np.full((1, *model.registry[DEM].pixel_shape), 120.0, np.float32)
    samples = model.generate([S2], {DEM: dem}, n_samples=2, steps=2)
    assert samples[S2].shape == (1, 2, *model.registry[S2].pixel_shape)
    assert np.isfinite(samples[S2]).all()
    # Running the command again finds everything done.
    capsys.readouterr()
    assert convert(config_file, cache, out) == 0
    assert "already converted" in capsys.readouterr().out


def test_a_pinned_revision_is_resolved_and_recorded(release_cache, config_file, tmp_path):
    cache, commits = release_cache
    out = tmp_path / "pinned"
    assert convert(config_file, cache, out, f"--revision={commits[hub.BACKBONE_REPO]}",
                   f"--vaes-revision={commits[hub.VAES_REPO]}") == 0
    record = json.loads((out / RELEASE_RECORD).read_text())
    assert record["backbone"]["revision"] == record["backbone"]["commit"] == commits[hub.BACKBONE_REPO]


@pytest.mark.parametrize("revision", ["v9.9", "0" * 40])
def test_an_unknown_revision_offline_is_an_error_and_writes_nothing(release_cache, config_file, tmp_path, capsys,
                                                                    revision):
    cache, _ = release_cache
    out = tmp_path / "nothing"
    assert convert(config_file, cache, out, f"--revision={revision}") == 1
    err = capsys.readouterr().err
    assert hub.BACKBONE_REPO in err and repr(revision) in err and "cannot be reached" in err
    assert not out.exists()


def test_no_network_and_no_cache_is_an_error_and_writes_nothing(config_file, tmp_path, capsys):
    out = tmp_path / "nothing"
    assert convert(config_file, tmp_path / "empty_cache", out) == 1
    err = capsys.readouterr().err
    assert "not in the cache" in err and "HF_HUB_OFFLINE" in err
    assert not out.exists()


def test_a_partial_download_names_the_missing_file_and_writes_nothing(release_cache, config_file, tmp_path, capsys):
    cache = tmp_path / "partial_cache"
    copy_cache(release_cache[0], cache)
    missing = f"LULC_192x192_LULC_latent_8/{hub.VAE_FILE}"
    drop_file(cache, hub.VAES_REPO, missing)
    out = tmp_path / "nothing"
    assert convert(config_file, cache, out) == 1
    err = capsys.readouterr().err
    assert missing in err and "incomplete" in err
    assert not out.exists()


def test_an_autoencoder_missing_from_the_snapshot_is_named(release_cache):
    cfg = small_release_config()
    cfg.modalities.names = (*cfg.modalities.names, "S1RTC_vh_vv")
    from copgen_jax.convert.released import fetch_release
    with pytest.raises(hub.HubError, match=f"S1RTC_192x192_VV_VH_latent_8/{hub.VAE_FILE}.*incomplete"):
        fetch_release(cfg, cache_dir=release_cache[0])


def test_every_release_folder_names_a_registry_modality():
    from copgen_jax.modalities import OFFICIAL
    spatial = {m.name for m in OFFICIAL if m.kind != "scalar"}
    assert set(hub.VAE_FOLDERS.values()) == spatial
    for folder, name in hub.VAE_FOLDERS.items():
        assert folder.split("_")[0] == name.split("_")[0]  # same product
