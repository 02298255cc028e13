"""GeoTIFF I/O: every modality lands exactly on the footprint; conditions are checked and read."""
import pathlib

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from copgen_jax.inference import geo
from copgen_jax.inference.copgen import Generation
from copgen_jax.modalities import ModalityError, build_registry

REG = build_registry()
S2, S2_20, S2_60, DEM, LULC = ("S2L2A_B02_B03_B04_B08", "S2L2A_B05_B06_B07_B11_B12_B8A", "S2L2A_B01_B09",
                               "DEM_DEM", "LULC_LULC")
# A Major TOM-like footprint: UTM 32N, its top-left corner on the 10 m grid.
FOOTPRINT = geo.Footprint.from_grid("EPSG:32632", (10.0, 0.0, 399960.0, 0.0, -10.0, 5100000.0), 192)


@pytest.mark.parametrize("name", [m.name for m in REG.spatial])
def test_every_gsd_lands_on_the_footprint(tmp_path, name):
    m = REG[name]
    data = np.zeros(m.physical_shape, np.int64 if m.num_classes else np.float32)
    path = geo.write_raster(tmp_path / "x.tif", data, m, FOOTPRINT)
    with rasterio.open(path) as src:
        assert src.crs == CRS.from_epsg(32632)
        assert (src.width, src.height, src.count) == (m.size, m.size, len(m.bands))
        assert src.transform.almost_equals(Affine(m.gsd, 0, 399960.0, 0, -m.gsd, 5100000.0))
        assert src.bounds == pytest.approx((399960.0, 5100000.0 - 1920.0, 399960.0 + 1920.0, 5100000.0))
        assert src.descriptions == m.bands
        assert src.tags()["modality"] == name
        assert src.dtypes[0] == ("uint8" if m.num_classes else "float32")


def test_scaled_registries_keep_the_footprint(tmp_path):
    small = build_registry(pixel_scale=4, downsample=4)  # 48 px at 40 m, DEM 16 px at 120 m
    for m in small.spatial:
        t = FOOTPRINT.transform_for(m)
        assert (t.c, t.f) == (399960.0, 5100000.0) and t.a == pytest.approx(m.gsd) and m.size * t.a == 1920.0


def test_footprint_centred_on_a_point():
    fp = geo.Footprint.centred_on(-33.9, 18.4, 1920.0)
    assert fp.crs == CRS.from_epsg(32734)  # UTM 34S
    lat, lon = fp.centre_latlon()
    assert (lat, lon) == pytest.approx((-33.9, 18.4), abs=1e-7)
    assert fp.side == pytest.approx(1920.0)
    assert not fp.matches(geo.Footprint.centred_on(-33.9, 18.41, 1920.0))


def test_record_footprint_and_condition_files(tmp_path):
    small = build_registry([DEM, LULC], pixel_scale=4, downsample=4)
    record = {"crs": "EPSG:32632", "transform": (40.0, 0.0, 500000.0, 0.0, -40.0, 4000000.0),
              "pixels": {DEM: np.full((1, 16, 16), 100.0, np.float32), LULC: np.ones((1, 48, 48), np.int32)}}
    paths = geo.write_record(record, small, tmp_path)
    for name, path in paths.items():
        r = geo.read_condition(path, small[name])
        np.testing.assert_array_equal(r.data, record["pixels"][name])
        assert r.footprint.matches(geo.record_footprint(record, small))


def write(path, data, transform=Affine(10, 0, 500000, 0, -10, 4001920), crs="EPSG:32631", nodata=None,
          descriptions=None):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], 1):
            dst.set_band_description(i, d)
    return str(path)


def test_condition_checks_name_what_is_expected(tmp_path):
    m = REG[S2]
    bad_bands = write(tmp_path / "a.tif", np.zeros((3, 192, 192), np.uint16))
    with pytest.raises(ModalityError, match=r"a.tif: 3 band\(s\), but S2L2A_B02_B03_B04_B08 expects 4 band\(s\) "
                                            r"\(B04, B03, B02, B08\) of 192x192 px at 10 m"):
        geo.read_condition(bad_bands, m)
    bad_size = write(tmp_path / "b.tif", np.zeros((4, 96, 96), np.uint16))
    with pytest.raises(ModalityError, match="96x96 px, but .* expects .* 192x192 px at 10 m per pixel"):
        geo.read_condition(bad_size, m)
    bad_gsd = write(tmp_path / "c.tif", np.zeros((4, 192, 192), np.uint16), transform=Affine(20, 0, 0, 0, -20, 0))
    with pytest.raises(ModalityError, match="20 m pixels, but .* resample it to 10 m"):
        geo.read_condition(bad_gsd, m)
    degrees = write(tmp_path / "d.tif", np.zeros((4, 192, 192), np.uint16), crs="EPSG:4326",
                    transform=Affine(1e-4, 0, 7, 0, -1e-4, 45))
    with pytest.raises(ModalityError, match="not projected"):
        geo.read_condition(degrees, m)
    with pytest.raises(ModalityError, match="scalar modality"):
        geo.read_condition(bad_size, REG["mean_timestamps"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        geo.read_condition(tmp_path / "missing.tif", m)


def test_band_descriptions_reorder_and_nodata_is_filled(tmp_path):
    m = REG[S2]
    data = np.stack([np.full((192, 192), v, np.float32) for v in (2, 3, 4, 8)])  # file order B02 B03 B04 B08
    data[0, :2, :3] = -9999
    path = write(tmp_path / "s2.tif", data, nodata=-9999, descriptions=["B02", "B03", "B04", "B08"])
    r = geo.read_condition(path, m)
    assert r.filled == 6
    np.testing.assert_array_equal(r.data[:, 0, 0], [4, 3, 2, 8])  # registry order B04 B03 B02 B08; filled B02
    assert r.footprint.corner == (500000, 4001920)
    with pytest.raises(ModalityError, match="6 NaN/nodata pixels"):
        geo.read_condition(path, m, nodata="error")
    codes = np.ones((1, 192, 192), np.uint8)
    codes[0, :10] = 255
    codes[0, 10:20] = 2
    r = geo.read_condition(write(tmp_path / "lc.tif", codes, nodata=255), REG[LULC])
    assert r.filled == 1920 and (r.data[0, :10] == 1).all()  # the most frequent valid class


def test_write_generation_layout(tmp_path):
    small = build_registry([DEM, LULC, "3d_cartesian_lat_lon"], pixel_scale=4, downsample=4)
    rng = np.random.default_rng(0)
    samples = {DEM: rng.uniform(0, 100, (1, 2, 1, 16, 16)), LULC: np.ones((1, 2, 1, 48, 48), np.int64),
               "3d_cartesian_lat_lon": np.zeros((1, 2, 2))}
    stats = {DEM: {"mean": samples[DEM].mean(1), "std": samples[DEM].std(1)},
             LULC: {"mode": np.ones((1, 1, 48, 48), np.int64), "frequencies": np.zeros((1, 10, 48, 48)),
                    "uncertainty": np.zeros((1, 1, 48, 48))}}
    gen = Generation(samples, {}, {}, stats, [FOOTPRINT], small, 3, {"n_samples": 2})
    written = geo.write_generation(tmp_path, gen, FOOTPRINT)
    names = sorted(pathlib.Path(p).relative_to(tmp_path).as_posix() for p in written)
    assert names == [f"{DEM}/mean.tif", f"{DEM}/sample_000.tif", f"{DEM}/sample_001.tif", f"{DEM}/std.tif",
                     f"{LULC}/frequencies.tif", f"{LULC}/mode.tif", f"{LULC}/sample_000.tif",
                     f"{LULC}/sample_001.tif", f"{LULC}/uncertainty.tif"]
    with rasterio.open(tmp_path / DEM / "sample_001.tif") as src:
        np.testing.assert_allclose(src.read(), samples[DEM][0, 1], rtol=1e-6)
        assert src.transform.almost_equals(Affine(120.0, 0, 399960.0, 0, -120.0, 5100000.0))
    with rasterio.open(tmp_path / LULC / "frequencies.tif") as src:
        assert src.count == 10 and src.descriptions[1] == "Water"
