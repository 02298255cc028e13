"""Region conditioning: a partly known modality generated with its known pixels kept exactly."""
import json

import numpy as np
import pytest
import rasterio

from copgen_jax.inference import cli, geo
from copgen_jax.inference import known as known_lib
from copgen_jax.modalities import ModalityError
from tests.fixtures.sampling_run import DEM, LATLON, LULC, S2

SIDE = 48  # the tiny run's S2 side; its tokenizer downsamples by 4 (12 x 12 latent)


def scene(batch=None):
    lead = () if batch is None else (batch,)
    return np.random.default_rng(1).uniform(200, 3000, (*lead, 4, SIDE, SIDE))


def gap_mask():
    """Known everywhere but a 21 x 19 px hole whose edges cut through latent pixels."""
    mask = np.ones((SIDE, SIDE), bool)
    mask[9:30, 14:33] = False
    return mask


DEM_IN = {DEM: np.random.default_rng(2).uniform(0, 900, (1, 16, 16))}


@pytest.mark.parametrize("opts", [dict(sampler="ddim"), dict(sampler="dpm++"), dict(sampler="ddim", guidance=2.0),
                                  dict(sampler="dpm++", resample=1), dict(sampler="dpm++sde", resample=1)],
                         ids=["ddim", "dpm++", "guidance2", "dpm++-r1", "dpm++sde-r1"])
def test_known_pixels_kept_exactly_and_only_the_gap_varies(model, opts):
    pixels, mask = scene(), gap_mask()
    gen = model.generate([], DEM_IN, known={S2: (pixels, mask)}, n_samples=3, steps=2, seed=5, stats=True, **opts)
    assert gen.settings["generate"] == (S2,) and gen.settings["known"] == (S2,)
    assert gen.settings["eta"] == (1.0 if opts["sampler"] == "dpm++sde" else 0.0)  # each sampler's default
    out, std = gen[S2][0], gen.stats[S2]["std"][0]  # (N, 4, H, W), (4, H, W)
    for sample in out:
        np.testing.assert_array_equal(sample[:, mask], pixels[:, mask])
    assert np.all(std[:, mask] == 0) and np.all(std[:, ~mask] > 0)
    np.testing.assert_array_equal(gen.stats[S2]["mean"][0][:, mask], pixels[:, mask].astype(np.float32))
    np.testing.assert_array_equal(gen.known[S2][0], mask)
    # Latent pixels wholly known are the one encoded z0 in every sample; the others are generated.
    held = known_lib.latent_mask(mask[None], model.registry[S2].downsample)[0]
    lat = gen.latents[S2][0]
    assert held.sum() == 144 - 6 * 6 and not held[2:8, 3:9].any()  # the hole cuts latent rows 2-7, columns 3-8
    np.testing.assert_array_equal(lat[1][:, held], lat[0][:, held])
    assert not np.allclose(lat[1][:, ~held], lat[0][:, ~held])


def test_mask_spellings_and_batches(model):
    """(H, W) mask broadcast over inputs; a nodata value; NaN as 'unknown' with None."""
    pixels, mask = scene(2), gap_mask()
    by_mask = model.generate([], DEM_IN, known={S2: (pixels, mask)}, steps=1, seed=1)
    holed = np.where(mask, pixels, -1.0)
    by_value = model.generate([], DEM_IN, known={S2: (holed, -1.0)}, steps=1, seed=1)
    by_nan = model.generate([], DEM_IN, known={S2: (np.where(mask, pixels, np.nan), None)}, steps=1, seed=1)
    assert by_mask[S2].shape == (2, 1, 4, SIDE, SIDE)
    # Unknown pixels are filled by the known ones' band means before encoding: all three spellings agree.
    np.testing.assert_array_equal(by_value[S2], by_mask[S2])
    np.testing.assert_array_equal(by_nan[S2], by_mask[S2])


def test_a_partly_known_class_map(model):
    mask = gap_mask()
    codes = np.where(mask, 4, 2)[None]  # crops known, trees where unknown
    gen = model.generate([S2], DEM_IN, known={LULC: (codes, mask)}, n_samples=2, steps=1, stats=True)
    assert gen[LULC].dtype == np.int64 and np.all(gen[LULC][0, :, 0][:, mask] == 4)
    assert np.all(gen.stats[LULC]["uncertainty"][0, 0][mask] == 0)


@pytest.mark.parametrize("known, match", [
    ({S2: (scene(), np.ones((SIDE, SIDE - 1), bool))},
     r"mask has shape \(48, 47\), expected \(48, 48\) or \(1, 48, 48\)"),
    ({S2: (scene(2), np.ones((3, SIDE, SIDE), bool))}, r"mask has shape \(3, 48, 48\), expected .* \(2, 48, 48\)"),
    ({"S1RTC_vh_vv": (scene(), gap_mask())}, r"unknown modality 'S1RTC_vh_vv'"),
    ({S2: (scene(), np.zeros((SIDE, SIDE), bool))}, rf"marks no pixel as known; generate {S2} instead"),
    ({S2: (scene(), np.ones((SIDE, SIDE), bool))}, rf"every pixel is known; pass {S2} as a condition"),
    ({S2: (np.where(gap_mask(), np.nan, scene()), ~gap_mask() | np.eye(SIDE, dtype=bool))},
     r"known pixel\(s\) hold NaN/inf; mark them unknown"),
    ({S2: (scene(), gap_mask().astype(np.uint8))}, r"must be a boolean mask .* mask != 0"),
    ({S2: (scene()[:3], gap_mask())}, r"pixels have shape \(1, 3, 48, 48\), expected \(4, 48, 48\)"),
    ({S2: scene()}, r"expected \(pixels, mask\)"),
    ({LATLON: (np.array([45.0, 7.0]), None)}, r"scalar modality is known whole or not at all"),
    ({DEM: (DEM_IN[DEM], np.ones((16, 16), bool))}, r"both given as a condition and as partly known"),
])
def test_errors(model, known, match):
    with pytest.raises(ModalityError, match=match):
        model.generate([], DEM_IN, known=known, steps=1)


# -- copgen-sample --known ------------------------------------------------------------------------------
FOOTPRINT = geo.Footprint.from_grid("EPSG:32632", (40.0, 0, 399960.0, 0, -40.0, 5100000.0), SIDE)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("known")
    reg = model.registry
    mask = gap_mask()
    return dict(s2=geo.write_raster(folder / "s2.tif", scene(), reg[S2], FOOTPRINT),
                mask=geo.write_raster(folder / "clear.tif", mask[None].astype(np.float32), reg[S2], FOOTPRINT,
                                      descriptions=("known",)),
                narrow=geo.write_raster(folder / "narrow.tif", mask[None, :, :40].astype(np.float32), reg[S2],
                                        FOOTPRINT, descriptions=("known",)),
                dem=geo.write_raster(folder / "dem.tif", DEM_IN[DEM][0], reg[DEM], FOOTPRINT))


def test_cli_fills_the_gap_of_a_geotiff(run, model, files, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["--workdir", run, "--known", f"{S2}={files['s2']}", "--known-mask", files["mask"],
                   "--condition", f"{DEM}={files['dem']}", "--n-samples", "2", "--steps", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    mask, truth = gap_mask(), scene()
    for j in range(2):
        with rasterio.open(out / S2 / f"sample_{j:03d}.tif") as src:
            assert src.crs.to_epsg() == 32632
            assert src.transform.almost_equals(FOOTPRINT.transform_for(model.registry[S2]))
            np.testing.assert_array_equal(src.read()[:, mask], truth[:, mask].astype(np.float32))
    with rasterio.open(out / S2 / "std.tif") as src:
        std = src.read()
    assert np.all(std[:, mask] == 0) and np.all(std[:, ~mask] > 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["known"] == [S2] and summary["generate"] == [S2] and summary["footprint_corner"] == [399960.0,
                                                                                                       5100000.0]


def test_a_geotiff_with_a_nodata_value(model, files, tmp_path):
    """Pixels as a file, the unknown ones marked by value (as --known-nodata passes them); the
    outputs are placed on the file's footprint."""
    holed = np.where(gap_mask(), scene(), 0.0)
    path = geo.write_raster(tmp_path / "holed.tif", holed, model.registry[S2], FOOTPRINT)
    args = cli.parse_args(["--workdir", "w", "--out", "o", "--known", f"{S2}={path}", "--known-nodata", "0"])
    known = cli.build_known(args, model.registry)
    assert known == {S2: (path, 0.0)}
    gen = model.generate([], known=known, steps=1)
    in_file = holed.astype(np.float32)  # the GeoTIFF holds float32
    np.testing.assert_array_equal(gen[S2][0, 0][:, gap_mask()], in_file[:, gap_mask()])
    np.testing.assert_array_equal(gen.known[S2][0], gap_mask())
    assert gen.footprints[0].matches(FOOTPRINT)


@pytest.mark.parametrize("extra, message", [
    (["--known-mask", "{narrow}"], "narrow.tif: a mask of 1 band(s) of 40x48 px, but the mask of "
                                   f"{S2} must be 1 band of 48x48 px"),
    (["--known-mask", "{mask}", "--known-nodata", "0"], "give --known-mask or --known-nodata, not both"),
    (["--known-mask", f"{DEM}={{mask}}"], f"{DEM} has no --known {DEM}=PATH"),
])
def test_cli_errors(run, files, tmp_path, capsys, extra, message):
    extra = [e.format(**files) for e in extra]
    rc = cli.main(["--workdir", run, "--known", f"{S2}={files['s2']}", *extra, "--steps", "1", "--out", str(tmp_path)])
    assert rc == 2
    assert message in capsys.readouterr().err
