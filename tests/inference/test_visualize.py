"""Previews follow the registry: band choice, palettes, hillshade, S1 false colour, the sheet."""
import numpy as np
import pytest
from matplotlib import colors as mcolors

from copgen_jax.inference import visualize
from copgen_jax.inference.copgen import Generation
from copgen_jax.inference.stats import sample_stats
from copgen_jax.modalities import build_registry

REG = build_registry()


def test_true_colour_uses_the_registry_preview_bands():
    m = REG["S2L2A_B02_B03_B04_B08"]  # stored B04, B03, B02, B08
    x = np.zeros((4, 8, 8))
    x[0, :, :4] = 3000  # red band bright on the left
    x[2, :, 4:] = 3000  # blue band bright on the right
    img, _ = visualize.render(m, x)
    assert img.shape == (8, 8, 3)
    assert img[0, 0, 0] == 1 and img[0, 0, 2] == 0 and img[0, 7, 2] == 1 and img[0, 7, 0] == 0
    grey, _ = visualize.render(REG["S2L2A_B01_B09"], np.random.default_rng(0).uniform(0, 3000, (2, 4, 4)))
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])  # no preview bands: the first band in grey


def test_reflectance_has_one_fixed_stretch_so_land_stays_readable_beside_clouds():
    m = REG["S2L2A_B02_B03_B04_B08"]
    land = np.full((4, 4, 4), 600.0)
    cloud = np.full((4, 4, 4), 9000.0)
    alone, _ = visualize.render(m, land)
    beside_cloud, _ = visualize.render(m, land, visualize.joint_stretch(m, [land, cloud]))
    np.testing.assert_allclose(alone, 0.2)  # 600 DN of 3000
    np.testing.assert_array_equal(alone, beside_cloud)
    np.testing.assert_array_equal(visualize.render(m, cloud)[0], 1.0)


def test_class_maps_use_the_legend():
    m = REG["LULC_LULC"]
    img, _ = visualize.render(m, np.array([[[1, 2]]]))
    np.testing.assert_allclose(img[0, 0], mcolors.to_rgb("#419bdf"))  # water
    np.testing.assert_allclose(img[0, 1], mcolors.to_rgb("#397d49"))  # trees
    with pytest.raises(ValueError, match="not in the table"):
        visualize.render(m, np.array([[[3]]]))


def test_hillshade_lights_slopes_facing_the_sun():
    x = np.arange(16.0)
    towards_nw = np.add.outer(x, x)[::-1, ::-1] * 10  # rises towards the north-west
    away = towards_nw[::-1, ::-1]
    assert visualize.hillshade(towards_nw, 30.0).mean() > visualize.hillshade(away, 30.0).mean()
    assert visualize.hillshade(np.zeros((4, 4)), 30.0) == pytest.approx(np.sin(np.radians(45)))


def test_s1_false_colour_and_scalars_as_text():
    m = REG["S1RTC_vh_vv"]
    lin = np.stack([np.full((4, 4), 0.1), np.full((4, 4), 0.01)])
    img_lin, _ = visualize.render(m, lin, stretch=([-30, -30, 0], [0, 0, 20]))
    img_db, _ = visualize.render(m, 10 * np.log10(lin), stretch=([-30, -30, 0], [0, 0, 20]), unit="db")
    np.testing.assert_allclose(img_lin, img_db)
    np.testing.assert_allclose(img_lin[0, 0], [20 / 30, 10 / 30, 0.5])  # VV -10 dB, VH -20 dB, ratio 10 dB
    assert visualize.describe(REG["3d_cartesian_lat_lon"], [-33.9, 18.4]) == "33.90°S 18.40°E"
    assert visualize.describe(REG["mean_timestamps"], np.datetime64("2021-06-01")) == "2021-06-01"


def test_sheet_with_truth_and_uncertainty(tmp_path):
    reg = build_registry(["DEM_DEM", "LULC_LULC", "3d_cartesian_lat_lon"], pixel_scale=4, downsample=4)
    rng = np.random.default_rng(0)
    dem = rng.uniform(0, 100, (1, 3, 1, 16, 16))
    lulc = rng.choice([1, 2, 4], (1, 3, 1, 48, 48))
    gen = Generation({"DEM_DEM": dem, "LULC_LULC": lulc}, {"3d_cartesian_lat_lon": np.array([[1.0, 2.0]])}, {},
                     {n: sample_stats(reg[n], v) for n, v in (("DEM_DEM", dem), ("LULC_LULC", lulc))}, [None], reg,
                     0, {"n_samples": 3, "units": {}})
    path = visualize.save_sheet(tmp_path / "s.png", gen, truth={"DEM_DEM": dem[0, 0]})
    from matplotlib import image
    png = image.imread(path)
    assert png.shape[0] > 300 and png.shape[1] > 1000  # 2 rows x (truth + 3 samples + mean + std)
