"""The Major TOM reader on GeoTIFF trees written with rasterio: geometry, absences, bad input."""
import shutil

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import reproject, transform as warp_transform, transform_bounds

from copgen_jax.modalities import build_registry
from copgen_jax.datasets import majortom
from copgen_jax.datasets.footprints import DataError, InvalidPolicy, ReadReport, mean_date
from copgen_jax.datasets.synthetic import cell_latlon, write_majortom

REG = build_registry()
L2A, L1C, S1, DEM, LULC = "Core-S2L2A", "Core-S2L1C", "Core-S1RTC", "Core-DEM", "Core-LULC"
RGBN, S1M, DEMM, LULCM, L1C60 = ("S2L2A_B02_B03_B04_B08", "S1RTC_vh_vv", "DEM_DEM", "LULC_LULC",
                                 "S2L1C_B01_B09_B10")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One synthetic cell, 2 x 2 footprints, two observations, all 12 modalities."""
    root = tmp_path_factory.mktemp("majortom") / "world"
    (cell,) = write_majortom(root, cells=1, observations=2, seed=3, footprints_per_side=2)
    return root, cell


@pytest.fixture(scope="module")
def records(world):
    root, _ = world
    return list(majortom.iter_footprints(root, REG))


@pytest.fixture
def copy(world, tmp_path):
    """A private copy of the world to break."""
    root, cell = world
    shutil.copytree(root, tmp_path / "w")
    return tmp_path / "w", cell


def product(root, cell, name, k=0):
    return majortom.find_products(root, name, cell)[k]


def band(root, cell, name, b, k=0):
    return product(root, cell, name, k).band_path(b)


def rewrite(path, data, **changes):
    """Replace a GeoTIFF with ``data`` (bands, H, W), keeping its profile except ``changes`` (None: drop)."""
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=data.dtype.name)
    for key, value in changes.items():
        profile.pop(key, None) if value is None else profile.update({key: value})
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs


def by_key(recs):
    return {r["key"]: r for r in recs}


# ---------------------------------------------------------------------------
# Layout, records and geometry.
# ---------------------------------------------------------------------------


def test_layout_and_listing(world):
    root, cell = world
    row = cell.split("_")[0]
    assert majortom.list_cells(root) == [cell] == majortom.list_cells(root, REG)
    s2 = majortom.find_products(root, L2A, cell)
    assert len(s2) == 2 and s2[0].date < s2[1].date
    assert (root / L2A / row / cell / s2[0].product_id / "B8A.tif").is_file()
    assert (root / L1C / row / cell / product(root, cell, L1C).product_id / "cloud_mask.tif").is_file()
    assert band(root, cell, S1, "vv").is_file() and band(root, cell, DEM, "DEM").name == "DEM.tif"
    lulc = product(root, cell, LULC).path
    assert lulc.parent == root / LULC / row / cell.split("_")[1] and lulc.name.startswith(cell + "_")


def test_records_carry_every_modality_in_physical_units(world, records):
    _, cell = world
    assert len(records) == 2 * 2 * 2
    assert sorted(r["key"] for r in records if r["observation"] == 0) == [f"{cell}/0/{i}_{j}" for i in (0, 1)
                                                                          for j in (0, 1)]
    for r in records:
        assert set(r["pixels"]) == set(REG.names)
        for m in REG:
            assert np.shape(r["pixels"][m.name]) == m.physical_shape, m.name
            assert np.all(np.isfinite(m.normalize(r["pixels"][m.name])))
        assert r["split"] in ("train", "test") and r["crs"].startswith("EPSG:32")


def test_footprint_transforms_follow_the_cell_grid(world, records):
    root, cell = world
    _, t, crs = read(band(root, cell, L2A, "B04"))
    for r in records:
        assert r["transform"] == (10.0, 0.0, t.c + 1920.0 * r["col"], 0.0, -10.0, t.f - 1920.0 * r["row"])
        assert r["crs"] == f"EPSG:{crs.to_epsg()}"


def test_pixels_are_the_files_windows_at_every_gsd(world, records):
    root, cell = world
    r = by_key(records)[f"{cell}/1/1_0"]
    b04, _, _ = read(band(root, cell, L2A, "B04", 1))
    np.testing.assert_array_equal(r["pixels"][RGBN][0], b04[0, 192:384, 0:192])
    b10, _, _ = read(band(root, cell, L1C, "B10", 1))
    np.testing.assert_array_equal(r["pixels"][L1C60][2], b10[0, 32:64, 0:32])
    dem, _, _ = read(band(root, cell, DEM, "DEM"))
    np.testing.assert_array_equal(r["pixels"][DEMM][0], dem[0, 64:128, 0:64])
    vh, _, _ = read(band(root, cell, S1, "vh", 1))
    np.testing.assert_array_equal(r["pixels"][S1M][1], vh[0, 192:384, 0:192])  # bands in (vv, vh) order


def test_lat_lon_is_the_footprint_centre(world, records):
    _, cell = world
    lat, lon = cell_latlon(cell)
    for r in records:
        t = Affine(*r["transform"])
        (x,), (y,) = warp_transform(r["crs"], "EPSG:4326", [t.c + 960.0], [t.f - 960.0])
        np.testing.assert_allclose(r["pixels"]["3d_cartesian_lat_lon"], [y, x], atol=1e-9)
        assert abs(y - lat) < 0.05 and abs(x - lon) < 0.1


def test_date_is_the_midpoint_of_s1_and_s2(world, records):
    root, cell = world
    for k in (0, 1):
        s1, s2 = product(root, cell, S1, k).date, product(root, cell, L2A, k).date
        expect = mean_date([s1, s2])
        assert abs(int((expect - min(s1, s2)).astype(int)) - abs(int((s1 - s2).astype(int))) / 2) <= 0.5
        for r in records:
            if r["observation"] == k:
                assert r["date"] == str(expect) and r["pixels"]["mean_timestamps"] == expect


def test_observations_share_static_products(world, records):
    _, cell = world
    a, b = by_key(records)[f"{cell}/0/0_1"], by_key(records)[f"{cell}/1/0_1"]
    for name in (DEMM, LULCM):
        np.testing.assert_array_equal(a["pixels"][name], b["pixels"][name])
    assert not np.array_equal(a["pixels"][RGBN], b["pixels"][RGBN]) and a["date"] < b["date"]


def test_smaller_registry_averages_onto_coarser_pixels(world):
    root, cell = world
    small = build_registry([RGBN, DEMM, "3d_cartesian_lat_lon"], pixel_scale=4, downsample=4)
    recs = by_key(majortom.iter_footprints(root, small))
    r = recs[f"{cell}/0/1_1"]
    assert r["pixels"][RGBN].shape == (4, 48, 48) and r["pixels"][DEMM].shape == (1, 16, 16)
    assert r["transform"][0] == 40.0 and set(r["pixels"]) == set(small.names)
    b04, _, _ = read(band(root, cell, L2A, "B04"))
    native = b04[0, 192:384, 192:384].astype(np.float64)
    np.testing.assert_allclose(r["pixels"][RGBN][0], native.reshape(48, 4, 48, 4).mean((1, 3)), rtol=1e-4)


def test_split_function_is_applied_per_cell(world):
    root, cell = world
    recs = list(majortom.iter_footprints(root, REG.subset([DEMM]), split_fn=lambda c: "test"))
    assert {r["split"] for r in recs} == {"test"}
    assert len(recs) == 4 and {r["date"] for r in recs} == {""}  # DEM alone: one undated observation


def test_real_major_tom_cell_size_gives_6x6_overlapping_footprints(tmp_path):
    """1068 px at 10 m, 356 at 30 m: the last footprint is pulled back, as the reference does."""
    reg = build_registry([RGBN, DEMM])
    cell, crs, x0, y0 = "536U_904R", "EPSG:32631", 500000.0, 5400000.0
    rng = np.random.default_rng(0)
    p = majortom.product_dir(tmp_path, L2A, cell, "S2A_MSIL2A_20200216T024801_N0500_R132_T31UVP_20230501T220848")
    p.mkdir(parents=True)
    for b in ("B02", "B03", "B04", "B08"):
        data = rng.integers(1, 10000, (1, 1068, 1068)).astype(np.uint16)
        with rasterio.open(p / f"{b}.tif", "w", driver="GTiff", width=1068, height=1068, count=1, dtype="uint16",
                           crs=crs, transform=Affine(10, 0, x0, 0, -10, y0)) as f:
            f.write(data)
    d = majortom.product_dir(tmp_path, DEM, cell, "id")
    d.mkdir(parents=True)
    dem = rng.uniform(0, 900, (1, 356, 356)).astype(np.float32)
    with rasterio.open(d / "DEM.tif", "w", driver="GTiff", width=356, height=356, count=1, dtype="float32",
                       crs=crs, transform=Affine(30, 0, x0, 0, -30, y0)) as f:
        f.write(dem)
    recs = by_key(majortom.iter_footprints(tmp_path, reg))
    assert len(recs) == 36
    last = recs[f"{cell}/0/5_5"]
    assert last["transform"][2] == x0 + 8760.0 and last["transform"][5] == y0 - 8760.0
    b04, _, _ = read(p / "B04.tif")
    np.testing.assert_array_equal(last["pixels"][RGBN][0], b04[0, 876:, 876:])
    np.testing.assert_array_equal(last["pixels"][DEMM][0], dem[0, 292:, 292:])
    assert last["date"] == "2020-02-16"  # S2 only: its own date


# ---------------------------------------------------------------------------
# Absences and bad input.
# ---------------------------------------------------------------------------


def test_missing_product_leaves_its_modality_absent(copy):
    root, cell = copy
    shutil.rmtree(root / S1)
    recs = list(majortom.iter_footprints(root, REG))
    assert len(recs) == 8
    s2_date = str(product(root, cell, L2A).date)
    for r in recs:
        assert S1M not in r["pixels"] and RGBN in r["pixels"] and DEMM in r["pixels"]
    assert {r["date"] for r in recs if r["observation"] == 0} == {s2_date}


def test_missing_band_file_is_absent_and_reported(copy):
    root, cell = copy
    missing = band(root, cell, L1C, "B10", 1)
    missing.unlink()
    report = ReadReport()
    recs = list(majortom.iter_footprints(root, REG, report=report))
    assert all((L1C60 in r["pixels"]) == (r["observation"] == 0) for r in recs)
    assert report.absent[(L1C60, "missing file")] == 1 and str(missing) in report.messages[0]


def test_wrong_band_count_names_the_file(copy):
    root, cell = copy
    path = band(root, cell, L2A, "B04")
    data, _, _ = read(path)
    rewrite(path, np.concatenate([data, data]))
    with pytest.raises(DataError, match=rf"{path}: 2 bands, expected 1"):
        list(majortom.iter_footprints(root, REG))


def test_wrong_dtype_names_the_file(copy):
    root, cell = copy
    path = band(root, cell, DEM, "DEM")
    data, _, _ = read(path)
    rewrite(path, data.astype(np.complex64), compress=None, predictor=None)
    with pytest.raises(DataError, match=rf"{path}: dtype complex64"):
        list(majortom.iter_footprints(root, REG))


def test_wrong_size_names_the_file(copy):
    root, cell = copy
    path = band(root, cell, S1, "vv")
    data, _, _ = read(path)
    rewrite(path, data[:, :300, :300])
    with pytest.raises(DataError, match=rf"{path}: covers .* wrong size"):
        list(majortom.iter_footprints(root, REG))


def test_file_in_the_wrong_place_names_the_file(copy):
    root, cell = copy
    path = band(root, cell, L2A, "B03")
    data, t, crs = read(path)
    other = "EPSG:32601" if crs.to_epsg() != 32601 else "EPSG:32602"
    rewrite(path, data, crs=other)
    with pytest.raises(DataError, match=rf"{path}: covers"):
        list(majortom.iter_footprints(root, REG))


def test_other_crs_is_reprojected_onto_the_cell_grid(copy, records):
    root, cell = copy
    path = band(root, cell, DEM, "DEM")
    with rasterio.open(path) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        w = h = 400
        t = Affine((east - west) / w, 0.0, west, 0.0, -(north - south) / h, north)
        out = np.zeros((1, h, w), np.float32)
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs, dst_transform=t,
                  dst_crs="EPSG:4326")
    rewrite(path, out, crs="EPSG:4326", transform=t)
    recs = by_key(majortom.iter_footprints(root, REG.subset([DEMM, RGBN])))
    before = by_key(records)[f"{cell}/0/1_1"]["pixels"][DEMM]
    after = recs[f"{cell}/0/1_1"]["pixels"][DEMM]
    assert after.shape == (1, 64, 64)
    assert np.abs(after - before).mean() < 0.05 * (np.ptp(before) + 1.0)
    with pytest.raises(DataError, match="no file in a metric projected CRS"):  # nothing left to fix the grid
        list(majortom.iter_footprints(root, REG.subset([DEMM])))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_grid_is_the_one_most_files_share(copy, records):
    root, cell = copy
    path = band(root, cell, LULC, "LULC")  # the finest-GSD modality first in registry order
    with rasterio.open(path) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:3857", *src.bounds)
        t = Affine(10.0, 0.0, west - 100, 0.0, -10.0, north + 100)
        out = np.zeros((1, int((north - south + 200) / 10), int((east - west + 200) / 10)), np.uint8)
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs, dst_transform=t,
                  dst_crs="EPSG:3857")
    rewrite(path, out, crs="EPSG:3857", transform=t)
    recs = by_key(majortom.iter_footprints(root, REG))
    for key, r in recs.items():
        before = by_key(records)[key]
        assert r["transform"] == before["transform"] and r["crs"] == before["crs"]
        assert np.mean(r["pixels"][LULCM] == before["pixels"][LULCM]) > 0.8


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_no_crs_names_the_file(copy):
    root, cell = copy
    path = band(root, cell, L2A, "B01")
    data, _, _ = read(path)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=1,
                       dtype=data.dtype.name) as dst:
        dst.write(data)
    with pytest.raises(DataError, match=rf"{path}: no CRS"):
        list(majortom.iter_footprints(root, REG))


def test_codes_outside_the_table_name_the_file(copy):
    root, cell = copy
    path = band(root, cell, LULC, "LULC")
    data, _, _ = read(path)
    data[0, :5, :5] = 3  # 3 is not a land-cover code
    rewrite(path, data)
    with pytest.raises(DataError, match=rf"{path}: LULC_LULC has codes \[3\]"):
        list(majortom.iter_footprints(root, REG))


def test_nan_pixels_are_filled_and_counted_or_drop_the_modality(copy, records):
    root, cell = copy
    path = band(root, cell, S1, "vv")
    data, _, _ = read(path)
    data[0, 10:20, 10:20] = np.nan  # 100 px in footprint (0, 0): under 5%, filled
    data[0, 200:300, 200:300] = np.nan  # 10 000 px in footprint (1, 1): over 5%, absent
    rewrite(path, data)
    report = ReadReport()
    recs = by_key(majortom.iter_footprints(root, REG, report=report))
    filled = recs[f"{cell}/0/0_0"]["pixels"][S1M]
    assert np.all(filled[0, 10:20, 10:20] == 0.0) and np.all(np.isfinite(filled))
    np.testing.assert_array_equal(filled[1], by_key(records)[f"{cell}/0/0_0"]["pixels"][S1M][1])
    assert S1M not in recs[f"{cell}/0/1_1"]["pixels"] and S1M in recs[f"{cell}/1/1_1"]["pixels"]
    assert report.filled[S1M] == 100 and report.absent[(S1M, "invalid pixels")] == 1
    assert any(str(path) in m for m in report.messages)
    with pytest.raises(DataError, match=r"NaN/nodata pixels in S1RTC_vh_vv"):
        list(majortom.iter_footprints(root, REG, policy=InvalidPolicy("raise")))


def test_declared_nodata_is_invalid(copy):
    root, cell = copy
    path = band(root, cell, DEM, "DEM")
    data, _, _ = read(path)
    data[0, 0:4, 0:4] = -9999.0
    rewrite(path, data, nodata=-9999.0)
    report = ReadReport()
    recs = by_key(majortom.iter_footprints(root, REG.subset([DEMM, RGBN]), report=report))
    assert np.all(recs[f"{cell}/0/0_0"]["pixels"][DEMM][0, :4, :4] == 0.0)
    assert report.filled[DEMM] == 2 * 16  # both observations share the DEM


def test_cell_smaller_than_a_footprint_is_an_error(tmp_path):
    p = majortom.product_dir(tmp_path, L2A, "1U_1R", "S2A_MSIL2A_20200216T024801_N0500_R132_T31UVP_20230501T220848")
    p.mkdir(parents=True)
    for b in ("B02", "B03", "B04", "B08"):
        with rasterio.open(p / f"{b}.tif", "w", driver="GTiff", width=100, height=100, count=1, dtype="uint16",
                           crs="EPSG:32631", transform=Affine(10, 0, 500000, 0, -10, 5400000)) as f:
            f.write(np.ones((1, 100, 100), np.uint16))
    with pytest.raises(DataError, match=r"1U_1R: scene of 1000 x 1000 m is smaller than one 1920 m footprint .*B02"):
        list(majortom.iter_footprints(tmp_path, build_registry([RGBN])))


def test_unknown_cell_is_an_error(world):
    root, _ = world
    with pytest.raises(DataError, match="no product folder"):
        list(majortom.iter_footprints(root, REG, cells=["1U_1R"]))
    with pytest.raises(DataError, match="not '<row>_<col>'"):
        list(majortom.iter_footprints(root, REG, cells=["nonsense"]))
