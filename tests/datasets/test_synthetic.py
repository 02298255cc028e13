"""Physical plausibility and determinism of the synthetic Copernicus world."""
import dataclasses
import math

import numpy as np
import pytest
from rasterio.warp import transform as warp_transform

from copgen_jax.modalities import LULC_CLASSES, build_registry
from copgen_jax.datasets.synthetic import cell_grid, cell_id_for, cell_latlon, make_cell, sample_cells
from copgen_jax.datasets.synthetic import landscape as ls
from copgen_jax.datasets.synthetic.observation import make_conditions, seasonality, sun_position
from copgen_jax.datasets.synthetic.optical import illumination
from copgen_jax.datasets.synthetic.radar import backscatter_db

L2A, L1C, S1, DEM, LULC = "Core-S2L2A", "Core-S2L1C", "Core-S1RTC", "Core-DEM", "Core-LULC"
CELLS = sample_cells(0, 6)


@pytest.fixture(scope="module")
def scenes():
    """Two observations of six cells at 2 x 2 footprints (384 px at 10 m)."""
    return [make_cell(0, c, k, footprints_per_side=2) for c in CELLS for k in range(2)]


def pooled(scenes, fn):
    return np.concatenate([np.ravel(fn(s)) for s in scenes])


def clear(s):
    return s.rasters[L1C]["cloud_mask"] == 0


def ndvi(s, level=L2A):
    r = s.rasters[level]
    return (r["B08"] - r["B04"]) / (r["B08"] + r["B04"])


def vv_db(s):
    return 10 * np.log10(s.rasters[S1]["vv"])


def of_class(s, code, mask=None):
    m = s.rasters[LULC]["LULC"] == code
    return m if mask is None else m & mask


def test_shapes_follow_registry_at_native_resolution(scenes):
    s = scenes[0]
    for m in build_registry().spatial:
        for band in m.bands:
            assert s.rasters[m.product][band].shape == (2 * m.size,) * 2, (m.name, band)
    assert s.grid.width == 384 and s.grid.gsd == 10.0


def test_value_ranges_per_band(scenes):
    for s in scenes:
        for level in (L2A, L1C):
            for band, a in s.rasters[level].items():
                if band != "cloud_mask":
                    assert a.min() >= 1 and a.max() <= 16000, (level, band)
        assert 0 < s.rasters[S1]["vv"].min() and np.all(np.isfinite(s.rasters[S1]["vh"]))
        db = vv_db(s)
        assert -45 < np.percentile(db, 1) and np.percentile(db, 99) < 15
        dem = s.rasters[DEM]["DEM"]
        assert dem.min() >= 0 and dem.max() < 8849
        assert set(np.unique(s.rasters[LULC]["LULC"])) <= set(LULC_CLASSES.codes)
        assert set(np.unique(s.rasters[L1C]["cloud_mask"])) <= {0, 1, 2, 3}


def test_vegetation_ndvi_above_water(scenes):
    veg = pooled(scenes, lambda s: ndvi(s)[of_class(s, ls.TREES, clear(s))])
    water = pooled(scenes, lambda s: ndvi(s)[of_class(s, ls.WATER, clear(s))])
    assert veg.size > 1000 and water.size > 1000
    assert veg.mean() > 0.4 and water.mean() < 0.0
    assert np.median(veg) > np.percentile(water, 99)


def test_reflectance_levels_by_class(scenes):
    r = lambda band, code: pooled(scenes, lambda s: s.rasters[L2A][band][of_class(s, code, clear(s))])  # noqa
    assert np.median(r("B08", ls.WATER)) < 500
    assert 2000 < np.median(r("B08", ls.TREES)) < 4500 and np.median(r("B04", ls.TREES)) < 700


def test_water_vv_below_built_up(scenes):
    water = pooled(scenes, lambda s: vv_db(s)[of_class(s, ls.WATER)])
    built = pooled(scenes, lambda s: vv_db(s)[of_class(s, ls.BUILT)])
    trees = pooled(scenes, lambda s: vv_db(s)[of_class(s, ls.TREES)])
    assert np.median(water) < -14 and np.median(built) > -4
    assert np.median(water) < np.median(trees) < np.median(built)


def test_s1_speckle_and_moisture(scenes):
    for scene in scenes:  # gamma speckle with 4.4 looks: std / mean = 0.48 (plus some texture)
        water = scene.rasters[S1]["vv"][of_class(scene, ls.WATER)]
        assert water.size < 500 or 0.45 < water.std() / water.mean() < 0.8
    s = make_cell(0, CELLS[2], 0, footprints_per_side=1, products=[DEM])
    wet, dry = (backscatter_db(s.landscape, dataclasses.replace(s.conditions, moisture_anomaly=a))[0]
                for a in (0.3, -0.3))
    soil = np.isin(s.landscape.landcover, [ls.CROPS, ls.BARE, ls.RANGE])
    assert soil.sum() > 100 and (wet - dry)[soil].mean() > 1.0
    assert np.all((wet - dry)[s.landscape.landcover == ls.WATER] == 0)


def test_l1c_adds_path_radiance_strongest_in_blue(scenes):
    def excess(band):  # L1C - L2A over clear ground that is not snow (10 m bands)
        def one(s):
            ground = clear(s) & ~of_class(s, ls.SNOW)
            return (s.rasters[L1C][band] - s.rasters[L2A][band])[ground]
        return pooled(scenes, one).mean()

    blue, red, nir = excess("B02"), excess("B04"), excess("B08")
    assert blue > 300
    assert blue > red > nir


def test_cirrus_band_sees_clouds_not_ground(scenes):
    for s in scenes:
        b10 = s.rasters[L1C]["B10"]
        mask = s.rasters[L1C]["cloud_mask"][3::6, 3::6]  # the 60 m pixel centres
        assert np.median(b10[mask == 0]) < 60
        if (mask == 1).sum() > 50:
            assert np.median(b10[mask == 1]) > 10 * np.median(b10[mask == 0])


def test_cloud_mask_pixels_bright_and_shadows_dark(scenes):
    blue = lambda code: pooled(scenes, lambda s: s.rasters[L2A]["B02"][s.rasters[L1C]["cloud_mask"] == code])  # noqa
    clear_blue, thick, thin, shadow = blue(0), blue(1), blue(2), blue(3)
    assert thick.size > 1000 and thin.size > 1000 and shadow.size > 100
    assert thick.mean() > 4000
    assert thick.mean() > thin.mean() > clear_blue.mean() > shadow.mean()


def test_deterministic_from_seed():
    a, b = make_cell(5, CELLS[0], 1, footprints_per_side=1), make_cell(5, CELLS[0], 1, footprints_per_side=1)
    c = make_cell(6, CELLS[0], 1, footprints_per_side=1)
    for product, bands in a.rasters.items():
        for band in bands:
            np.testing.assert_array_equal(a.rasters[product][band], b.rasters[product][band])
    assert a.product_ids == b.product_ids
    assert not np.array_equal(a.rasters[L2A]["B04"], c.rasters[L2A]["B04"])


def test_observations_share_dem_and_land_cover_but_differ(scenes):
    first, second = scenes[0], scenes[1]
    assert first.cell_id == second.cell_id
    for product, band in ((DEM, "DEM"), (LULC, "LULC")):
        np.testing.assert_array_equal(first.rasters[product][band], second.rasters[product][band])
    assert first.conditions.date < second.conditions.date
    assert np.abs(first.rasters[L2A]["B02"] - second.rasters[L2A]["B02"]).mean() > 50
    assert not np.array_equal(first.rasters[S1]["vv"], second.rasters[S1]["vv"])
    assert first.product_ids[L2A] != second.product_ids[L2A] and first.product_ids[DEM] == second.product_ids[DEM]


def test_growing_season_greener_in_summer_than_winter():
    cell = "486U_1299R"  # 43.7 N
    lat, _ = cell_latlon(cell)
    seasons = [make_conditions(0, cell, k, lat).season for k in range(16)]
    summer, winter = int(np.argmax(seasons)), int(np.argmin(seasons))
    green = []
    for k in (summer, winter):
        s = make_cell(0, cell, k, footprints_per_side=1, products=[L2A, L1C, LULC])
        veg = (of_class(s, ls.TREES) | of_class(s, ls.CROPS) | of_class(s, ls.RANGE)) & clear(s)
        green.append(ndvi(s)[veg].mean())
    assert green[0] > green[1] + 0.1


def test_seasons_flip_between_hemispheres():
    july = 196
    assert seasonality(45.0, july)[0] > 0.95 and seasonality(-45.0, july)[0] < 0.1
    assert seasonality(-45.0, 14)[0] > 0.95
    assert abs(seasonality(2.0, july)[0] - seasonality(2.0, 14)[0]) < 0.05  # tropics stay green


def test_sun_geometry_and_hillshade():
    zenith, azimuth = sun_position(45.0, 172)
    assert math.degrees(zenith) < 35 and 100 < math.degrees(azimuth) < 180  # morning sun in the south-east
    _, azimuth_south = sun_position(-30.0, 172)
    assert 0 < math.degrees(azimuth_south) < 90  # north-east in the southern hemisphere
    land = make_cell(0, CELLS[0], 0, footprints_per_side=1, products=[DEM]).landscape
    cond = make_conditions(0, CELLS[0], 0, land.lat)
    n = land.landcover.shape
    land.landcover = np.full(n, ls.TREES, np.uint8)
    land.slope = np.full(n, math.radians(30), np.float32)
    land.aspect = np.full(n, cond.sun_azimuth, np.float32)
    toward = illumination(land, cond)
    land.aspect = np.full(n, cond.sun_azimuth + math.pi, np.float32)
    away = illumination(land, cond)
    land.slope = np.zeros(n, np.float32)
    np.testing.assert_allclose(illumination(land, cond), 1.0, rtol=1e-5)
    assert toward.min() > 1.0 > away.max()


def test_cell_ids_place_cells_on_the_globe():
    cells = sample_cells(3, 40)
    assert len(set(cells)) == 40
    lats = np.array([cell_latlon(c)[0] for c in cells])
    assert lats.min() < -20 and lats.max() > 40
    for c in cells[:5]:
        lat, lon = cell_latlon(c)
        assert cell_id_for(lat, lon) == c
        grid = cell_grid(c, 6)
        (x,), (y,) = warp_transform("EPSG:4326", grid.crs, [lon], [lat])
        w, h = grid.extent
        assert abs(grid.x0 + w / 2 - x) <= 60 and abs(grid.y0 - h / 2 - y) <= 60
        assert grid.x0 % 60 == 0 and grid.y0 % 60 == 0 and grid.width == 1152
    with pytest.raises(ValueError, match="row"):
        cell_latlon("nonsense")


def test_land_cover_follows_terrain_position():
    """Valley floors hold the wet classes and ridges the dry ones, within each cell."""
    wet_low, wet_high, dry_low, dry_high = [], [], [], []
    for cell in sample_cells(0, 16):
        lat, lon = cell_latlon(cell)
        land = ls.make_landscape(0, cell, lat, lon, 384)
        position = land.elevation - ls.blur(land.elevation, ls.POSITION_SCALE_M)
        low, high = position < np.quantile(position, 0.2), position > np.quantile(position, 0.8)
        wet = np.isin(land.landcover, [ls.WATER, ls.FLOODED, ls.CROPS]) & (land.elevation > 0)
        dry = np.isin(land.landcover, [ls.BARE, ls.RANGE])
        wet_low.append(wet[low].mean()), wet_high.append(wet[high].mean())
        dry_low.append(dry[low].mean()), dry_high.append(dry[high].mean())
    assert np.mean(wet_low) > 5 * np.mean(wet_high) and np.mean(dry_high) > 3 * np.mean(dry_low)


def test_cloudy_sky_is_a_real_date_of_the_place_within_the_share():
    from copgen_jax.datasets.synthetic.world import cloudy_sky
    cell = sample_cells(3, 1)[0]
    clear, date = cloudy_sky(3, cell, 1, lo=0.15, hi=0.6, skip=(0,))
    assert clear.shape == (192, 192) and clear.dtype == bool and date != 0
    assert 0.15 <= (~clear).mean() <= 0.6
    sky = make_cell(3, cell, date, 1, products=["Core-S2L1C"]).rasters["Core-S2L1C"]["cloud_mask"]
    np.testing.assert_array_equal(clear, sky == 0)
    again, later = cloudy_sky(3, cell, 1, skip=range(date + 1))
    assert later > date and not np.array_equal(again, clear)
    with pytest.raises(ValueError, match="first 2 dates"):
        cloudy_sky(3, cell, 1, lo=0.999, hi=1.0, dates=2)
