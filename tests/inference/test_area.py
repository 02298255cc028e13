"""Areas of any extent: the window layout, step-fused sampling on the latent canvas, georeferencing, bad inputs."""
import glob
import json
import os

import numpy as np
import pytest
import rasterio
from affine import Affine

from copgen_jax import CopGen
from copgen_jax.datasets import build
from copgen_jax.inference import area, fusion
from copgen_jax.modalities import OFFICIAL, ModalityError
from tests.fixtures.sampling_run import DEM, LATLON, LULC, S2, tiny_run_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return CopGen.load(tiny_run_dir(tmp_path_factory))


def world(model, out, side):
    """DEM and land-cover GeoTIFFs of one synthetic cell ``side`` footprints across (native resolution)."""
    raw = build.synthetic_raw(str(out), model.registry, cells=1, observations=1, seed=0, footprints_per_side=side,
                              progress=False)
    find = lambda product: glob.glob(os.path.join(raw, product, "**", "*.tif"), recursive=True)[0]  # noqa: E731
    return {DEM: find("Core-DEM"), LULC: find("Core-LULC")}


@pytest.fixture(scope="module")
def small_world(model, tmp_path_factory):
    return world(model, tmp_path_factory.mktemp("world1"), 1)


@pytest.fixture(scope="module")
def big_world(model, tmp_path_factory):
    return world(model, tmp_path_factory.mktemp("world3"), 3)


def test_the_quantum_lines_up_every_latent_grid():
    spatial = [m for m in OFFICIAL if not m.is_scalar]
    q = area.quantum(spatial)
    assert q == 480.0  # S2 10 m x 8, 20 m x 8, 60 m x 8, DEM 30 m x 8
    assert all((q / (m.gsd * m.downsample)).is_integer() for m in spatial)


@pytest.mark.parametrize("extent,overlap", [(5760, 960), (5760, 0), (6240, 480), (1920, 0), (4800, 1440)])
def test_windows_cover_every_pixel_on_whole_quanta(extent, overlap):
    grid = area.AreaGrid(None, 0.0, 0.0, float(extent), float(extent))
    layout = area.window_layout(grid, 1920.0, overlap, 480.0)
    assert np.all(layout.offsets % 480 == 0) and layout.offsets.max() == extent - 1920
    cover = fusion.coverage(layout.pixels(480.0), 4, (extent // 480, extent // 480))
    assert cover.min() >= 1  # every pixel covered
    if overlap and extent > 1920:
        assert cover.max() > 1  # neighbours overlap
    constant = np.full((len(layout.offsets), 1, 1, 4, 4), 3.5)
    acc, weight = area._blend(constant, layout.pixels(480.0), 4, cover.shape)
    np.testing.assert_allclose(acc / weight, 3.5)  # blending weights normalise exactly


def test_one_window_is_exactly_one_footprint_generation(model, small_world):
    res = area.generate_area(model, [S2], small_world, n_samples=2, steps=3, stats=False)
    assert len(res.layout.offsets) == 1
    given = {n: area.read_area(p, model.registry[n], res.grid)[0] for n, p in small_world.items()}
    given[LATLON] = area.window_latlon(res.grid, res.layout)[0]
    plain = model.generate([S2], given, n_samples=2, steps=3)
    np.testing.assert_allclose(res[S2], plain[S2][0], rtol=0, atol=1e-6 * np.abs(plain[S2]).max())


@pytest.mark.parametrize("sampler,guidance", [("ddim", 1.0), ("dpm++", 2.0), ("dpm++sde", 2.0)])
def test_an_area_is_one_georeferenced_image_per_modality(model, big_world, tmp_path, sampler, guidance):
    res = area.generate_area(model, [S2, DEM], {LULC: big_world[LULC]}, n_samples=2, steps=2, sampler=sampler,
                             guidance=guidance, window_batch=4, overlap=960)
    s2 = model.registry[S2]
    assert res.grid.width == res.grid.height == 3 * s2.size * s2.gsd
    assert len(res.layout.offsets) == 25  # half-footprint overlap: 5 x 5 windows
    assert res[S2].shape == (2, len(s2.bands), 3 * s2.size, 3 * s2.size) and np.isfinite(res[S2]).all()
    assert res[DEM].shape == (2, 1, 3 * model.registry[DEM].size, 3 * model.registry[DEM].size)
    assert not np.allclose(res[S2][0], res[S2][1])  # two samples, two images
    with rasterio.open(big_world[LULC]) as src:
        crs, corner = src.crs, (src.transform.c, src.transform.f)
    files = area.write_area(tmp_path, res)
    for name in (S2, DEM):
        gsd = model.registry[name].gsd
        with rasterio.open(tmp_path / name / "sample_000.tif") as out:
            assert out.crs == crs
            assert out.transform.almost_equals(Affine(gsd, 0, corner[0], 0, -gsd, corner[1]))
            np.testing.assert_allclose(out.read(), res[name][0], rtol=1e-6)
            assert out.tags()["fusion"] == "step" and "LULC_LULC:" in out.tags()["resampling"]
    assert str(tmp_path / S2 / "std.tif") in files


def test_the_default_overlap_is_three_quarters_of_a_footprint():
    grid = area.AreaGrid(None, 0.0, 0.0, 5760.0, 5760.0)
    layout = area.window_layout(grid, 1920.0, 1440.0, 480.0)
    assert len(layout.offsets) == 81 and area._stride(layout) == 480.0


def test_independent_tiling_is_the_comparison_it_claims(model, big_world):
    res = area.generate_area(model, [S2], big_world, n_samples=1, steps=2, fusion="none")
    assert len(res.layout.offsets) == 9 and res.settings["overlap_m"] == 0.0


def test_waves_hold_no_overlapping_windows_and_every_window_once():
    for width, count in ((5760.0, 4), (6240.0, 6)):  # 6240: the last column is pulled back, closer to its neighbour
        layout = area.window_layout(area.AreaGrid(None, 0.0, 0.0, width, 5760.0), 1920.0, 960.0, 480.0)
        waves = fusion.waves(layout)
        assert sorted(i for w in waves for i in w) == list(range(len(layout.offsets)))
        assert len(waves) == count  # half-footprint overlap: the four parities of (row, column)
        for wave in waves:
            for a in wave:
                for b in wave:
                    assert a == b or np.abs(layout.offsets[a] - layout.offsets[b]).max() >= 1920


def test_neighbour_windows_hold_what_earlier_waves_left(model, big_world, monkeypatch):
    calls = []
    sample = model._sample

    def recorded(cond, generate, batch, n, key, known=None, **opts):
        out = sample(cond, generate, batch, n, key, known=known, **opts)
        calls.append((known, out))
        return out

    monkeypatch.setattr(model, "_sample", recorded)
    res = area.generate_area(model, [S2], big_world, n_samples=2, steps=2, fusion="neighbours", window_batch=8,
                             overlap=960)
    s2 = model.registry[S2]
    assert res[S2].shape == (2, len(s2.bands), 3 * s2.size, 3 * s2.size) and np.isfinite(res[S2]).all()
    assert not np.allclose(res[S2][0], res[S2][1])
    first = -(-len(fusion.waves(res.layout)[0]) // 8)  # the first wave's calls start from nothing
    assert all(known == {} for known, _ in calls[:first]) and all(known for known, _ in calls[first:])
    assert len({len(out[S2]) for _, out in calls}) == 1  # one shape: compiled once
    for known, out in calls[first:]:
        z0, mask = known[S2]
        held = np.broadcast_to(mask[:, None], z0.shape)
        np.testing.assert_array_equal(out[S2][:, 0][held], z0[held])  # the overlaps came back as they were
        assert not mask.all(axis=(1, 2)).all()  # and every window had something of its own to generate


def test_copgen_sample_takes_conditions_of_any_extent(model, big_world, tmp_path_factory, tmp_path, capsys):
    from copgen_jax.inference import cli
    run = tiny_run_dir(tmp_path_factory)
    args = ["--workdir", run, "--generate", S2, "--condition", f"{LULC}={big_world[LULC]}", "--n-samples", "2",
            "--steps", "1", "--fusion", "none", "--window-batch", "9", "--out", str(tmp_path / "area")]
    assert cli.main(args) == 0
    summary = json.loads((tmp_path / "area" / "summary.json").read_text())
    s2 = model.registry[S2]
    assert summary["windows"] == 9 and summary["fusion"] == "none" and summary["area_m"] == [3 * 1920.0] * 2
    assert {"S2L2A_B02_B03_B04_B08/sample_001.tif", "S2L2A_B02_B03_B04_B08/std.tif", "sheet.png"} <= set(
        summary["files"])
    with rasterio.open(tmp_path / "area" / S2 / "sample_000.tif") as out, rasterio.open(big_world[LULC]) as src:
        assert (out.width, out.height) == (3 * s2.size, 3 * s2.size) and out.crs == src.crs
    scene = tmp_path / "area" / S2 / "sample_000.tif"
    assert cli.main(args[:-2] + ["--known", f"{S2}={scene}", "--out", str(tmp_path / "known")]) == 2
    assert "fusion='step' or 'neighbours'" in capsys.readouterr().err


@pytest.mark.parametrize("fusion", ["step", "neighbours"])
def test_a_cloudy_scene_over_an_area_keeps_its_clear_pixels(model, big_world, tmp_path, fusion):
    scene = area.generate_area(model, [S2], {LULC: big_world[LULC]}, n_samples=1, steps=1, fusion="none")
    area.write_area(tmp_path, scene)
    s2 = model.registry[S2]
    with rasterio.open(tmp_path / S2 / "sample_000.tif") as src:
        profile, truth = src.profile, src.read()
    yy, xx = np.mgrid[:src.height, :src.width]
    clear = (yy - 70) ** 2 + (xx - 60) ** 2 > 40 ** 2  # a round cloud across several windows
    profile.update(count=1, dtype="uint8")
    with rasterio.open(tmp_path / "clear.tif", "w", **profile) as dst:
        dst.write(clear.astype(np.uint8)[None])
    res = area.generate_area(model, [], {LULC: big_world[LULC]}, n_samples=2, steps=2, fusion=fusion, window_batch=9,
                             overlap=960,
                             known={S2: (str(tmp_path / S2 / "sample_000.tif"), str(tmp_path / "clear.tif"))})
    out = res[S2]
    assert out.shape == (2, len(s2.bands), *clear.shape)
    np.testing.assert_array_equal(out[:, :, clear], np.broadcast_to(truth[:, clear], out[:, :, clear].shape))
    std = res.stats[S2]["std"][0]
    assert np.all(std[:, clear] == 0) and std[:, ~clear].mean() > 0
    assert res.settings["known"] == S2
    with pytest.raises(ValueError, match="fusion='step' or 'neighbours'"):
        area.generate_area(model, [S2], {LULC: big_world[LULC]}, fusion="none",
                           known={S2: (str(tmp_path / S2 / "sample_000.tif"), None)})


def _write(path, crs, transform, size=64):
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="float32", crs=crs,
                       transform=transform) as dst:
        dst.write(np.full((1, size, size), 100.0, np.float32))
    return str(path)


def test_bad_areas_name_the_file(model, tmp_path):
    utm = "EPSG:32631"
    a = _write(tmp_path / "a.tif", utm, Affine(120, 0, 500000, 0, -120, 5000000))
    far = _write(tmp_path / "far.tif", utm, Affine(120, 0, 700000, 0, -120, 5000000))
    small = _write(tmp_path / "small.tif", utm, Affine(120, 0, 500000, 0, -120, 5000000), size=8)
    geographic = _write(tmp_path / "geo.tif", "EPSG:4326", Affine(0.001, 0, 3, 0, -0.001, 45))
    with pytest.raises(ModalityError, match="do not overlap.*far.tif"):
        area.generate_area(model, [S2], {DEM: a, LULC: far}, steps=1)
    with pytest.raises(ModalityError, match="less than one 1920 m footprint.*small.tif"):
        area.generate_area(model, [S2], {DEM: small}, steps=1)
    with pytest.raises(ModalityError, match="geo.tif.*geographic"):
        area.generate_area(model, [S2], {DEM: geographic}, steps=1)
    with pytest.raises(ModalityError, match="spatial condition"):
        area.generate_area(model, [S2], {}, steps=1)
    with pytest.raises(ValueError, match="fusion"):
        area.generate_area(model, [S2], {DEM: a}, fusion="seamless")
    with pytest.raises(ValueError, match="overlap"):
        area.generate_area(model, [S2], {DEM: a}, overlap=1920, steps=1)
