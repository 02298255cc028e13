"""The registry: shapes, token counts, normalisation round trips and errors."""
import numpy as np
import pytest

from copgen_jax.modalities import ModalityError, build_registry

REG = build_registry()
RNG = np.random.default_rng(0)


def physical_sample(m):
    """A valid physical-unit array for modality ``m``."""
    if m.name == "mean_timestamps":
        return np.array(["2019-01-01", "2020-02-29", "2020-12-31", "2024-07-15"], "datetime64[D]")
    if m.name == "3d_cartesian_lat_lon":
        return np.stack([RNG.uniform(-89, 89, 5), RNG.uniform(-179, 179, 5)], -1)
    if m.kind == "categorical":
        return RNG.choice(m.codec.codes, (2, *m.physical_shape))
    if m.name.startswith("S1"):
        return RNG.uniform(1e-4, 2.0, (2, *m.physical_shape))
    if m.name.startswith("DEM"):
        return RNG.uniform(1.0, 8000.0, (2, *m.physical_shape))
    return RNG.uniform(0, 12000, (2, *m.physical_shape))


def test_official_layout():
    assert REG.names == tuple(sorted(REG.names))
    assert len(REG) == 12
    assert REG.num_tokens == 834
    assert sum(m.num_tokens for m in REG) == 822
    assert REG["S2L2A_B02_B03_B04_B08"].latent_shape == (8, 24, 24)
    assert REG["DEM_DEM"].latent_shape == (8, 8, 8)
    assert REG["S2L1C_B01_B09_B10"].num_tokens == 4
    assert REG["LULC_LULC"].pixel_shape == (10, 192, 192)
    assert REG["S2L1C_cloud_mask"].pixel_shape == (4, 192, 192)
    assert REG["mean_timestamps"].latent_shape == (1, 1, 3)


@pytest.mark.parametrize("name", REG.names)
def test_round_trip(name):
    m = REG[name]
    x = physical_sample(m)
    y = m.normalize(x)
    assert y.dtype == np.float32
    assert y.shape == x.shape[: x.ndim - len(m.physical_shape)] + m.pixel_shape
    back = m.denormalize(y)
    if m.name == "mean_timestamps" or m.kind == "categorical":
        np.testing.assert_array_equal(back, x)
    else:
        np.testing.assert_allclose(back, x, rtol=2e-5, atol=1e-3)


def test_normalisation_formulas():
    s2 = REG["S2L2A_B02_B03_B04_B08"]
    np.testing.assert_allclose(s2.normalize(np.full((4, 192, 192), 5000.0))[0, 0, 0], 0.0, atol=1e-7)
    s1 = REG["S1RTC_vh_vv"]
    zero = s1.normalize(np.zeros((2, 192, 192)))  # nodata -> min_positive
    expected = 2 * (10 * np.log10(2.6380407689430285e-06) + 55.787186) / (40.2258 + 55.787186) - 1
    np.testing.assert_allclose(zero[0, 0, 0], expected, rtol=1e-6)
    db = s1.normalize(np.full((2, 192, 192), -10.0), units="db")
    np.testing.assert_allclose(db, s1.normalize(np.full((2, 192, 192), 0.1)), rtol=1e-6)
    dem = REG["DEM_DEM"]
    np.testing.assert_allclose(dem.normalize(np.full((1, 64, 64), 8849.0))[0, 0, 0], 1.0, atol=1e-4)
    date = REG["mean_timestamps"].normalize(np.datetime64("2000-01-01"))
    np.testing.assert_allclose(date, [np.sin(2 * np.pi / 366), np.cos(2 * np.pi / 366), 0.0], atol=1e-6)
    ll = REG["3d_cartesian_lat_lon"].normalize(np.array([0.0, 90.0]))
    np.testing.assert_allclose(ll, [0, 1, 0], atol=1e-7)


def test_signed_dem_keeps_below_sea_level():
    dem = build_registry(["DEM_DEM"], signed_dem=True)["DEM_DEM"]
    x = np.full((1, 64, 64), -400.0)
    np.testing.assert_allclose(dem.denormalize(dem.normalize(x)), x, rtol=1e-4)
    official = REG["DEM_DEM"]
    assert official.denormalize(official.normalize(x)).max() < 1e-3  # the reference loses it


@pytest.mark.parametrize("name,shape,message", [
    ("S2L2A_B02_B03_B04_B08", (3, 192, 192), "3 bands given, 4 expected: B04, B03, B02, B08"),
    ("S2L2A_B02_B03_B04_B08", (4, 96, 96), "96x96 px given, 192x192 expected"),
    ("DEM_DEM", (64, 64), "expected (..., 1, 64, 64)"),
    ("3d_cartesian_lat_lon", (3,), "expected (..., 2)"),
])
def test_shape_errors_name_modality_and_expectation(name, shape, message):
    with pytest.raises(ModalityError, match=name) as err:
        REG[name].normalize(np.zeros(shape))
    assert message in str(err.value)


def test_non_finite_and_unknown():
    x = np.ones((2, 192, 192))
    x[0, 3, 4] = np.nan
    with pytest.raises(ModalityError, match="S1RTC_vh_vv: 1 non-finite"):
        REG["S1RTC_vh_vv"].normalize(x)
    with pytest.raises(ModalityError, match="unknown modality 'S3_OLCI'.*known: 3d_cartesian_lat_lon"):
        REG["S3_OLCI"]
    with pytest.raises(ModalityError, match=r"LULC_LULC: class codes \[3, 6\] are not in the table"):
        REG["LULC_LULC"].normalize(np.array([[[0, 3], [6, 1]]]).repeat(96, 1).repeat(96, 2))
    with pytest.raises(ModalityError, match="mean_timestamps: cannot read"):
        REG["mean_timestamps"].normalize("yesterday")


def test_subsets_and_smaller_sizes():
    reg = build_registry(["S2L2A_B02_B03_B04_B08", "DEM_DEM", "mean_timestamps"], pixel_scale=4, downsample=4,
                         patch=2, latent_channels=4)
    assert reg.names == ("DEM_DEM", "S2L2A_B02_B03_B04_B08", "mean_timestamps")
    assert reg["S2L2A_B02_B03_B04_B08"].latent_shape == (4, 12, 12)
    assert reg["S2L2A_B02_B03_B04_B08"].gsd == 40.0
    assert reg.num_tokens == 3 + 4 + 36 + 3
    with pytest.raises(ModalityError, match="does not give a whole token grid"):
        build_registry(["S2L2A_B01_B09"], pixel_scale=4, downsample=8)


def test_per_modality_tokenisation_overrides_one_modality_and_survives_a_saved_config(tmp_path):
    names = ["S2L2A_B02_B03_B04_B08", "DEM_DEM", "mean_timestamps"]
    reg = build_registry(names, pixel_scale=4, downsample=4, patch=2, latent_channels=4,
                         per_modality={"DEM_DEM": {"downsample": 2, "latent_channels": 2}})
    assert reg["DEM_DEM"].latent_shape == (2, 8, 8) and reg["DEM_DEM"].num_tokens == 16
    assert reg["S2L2A_B02_B03_B04_B08"].latent_shape == (4, 12, 12)  # the others keep the shared values
    assert reg.num_tokens == 3 + 16 + 36 + 3

    from configs.demo import get_config
    from copgen_jax import checkpoint
    from copgen_jax.modalities import registry_from_config
    cfg = get_config()
    checkpoint.save_config(tmp_path, cfg)  # a run's config.json: generation and encoding rebuild from it
    assert registry_from_config(checkpoint.load_config(tmp_path)).latent_shapes() == \
        registry_from_config(cfg).latent_shapes()
    assert registry_from_config(cfg)["DEM_DEM"].latent_shape == (4, 8, 8)


@pytest.mark.parametrize("per_modality, message", [
    ({"LULC_LULC": {"downsample": 2}}, "not an image modality of this registry"),
    ({"mean_timestamps": {"patch": 1}}, "not an image modality of this registry"),
    ({"DEM_DEM": {"size": 32}}, "only downsample, patch, latent_channels can differ"),
    ({"DEM_DEM": {"downsample": 32}}, "DEM_DEM: native 64 px .* does not give a whole token grid"),
])
def test_per_modality_errors_name_the_modality_and_the_fix(per_modality, message):
    with pytest.raises(ModalityError, match=message):
        build_registry(["DEM_DEM", "mean_timestamps"], pixel_scale=4, downsample=4, per_modality=per_modality)
