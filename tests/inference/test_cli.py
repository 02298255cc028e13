"""copgen-sample end to end on a tiny run: GeoTIFFs on the footprint, sheet, summary, errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine

from copgen_jax.inference import cli
from copgen_jax.inference import geo
from copgen_jax.modalities import registry_from_config
from tests.fixtures.sampling_run import DATE, DEM, LULC, S2, tiny_config, tiny_run_dir

REG = registry_from_config(tiny_config())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def condition_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditions")
    fp = geo.Footprint.from_grid("EPSG:32632", (40.0, 0, 399960.0, 0, -40.0, 5100000.0), 48)
    rng = np.random.default_rng(0)
    dem = geo.write_raster(folder / "dem.tif", rng.uniform(0, 800, (1, 16, 16)), REG[DEM], fp)
    lulc = geo.write_raster(folder / "lulc.tif", np.full((1, 48, 48), 2), REG[LULC], fp)
    return dem, lulc


def test_end_to_end(run, condition_files, tmp_path, capsys):
    dem, lulc = condition_files
    out = tmp_path / "out"
    rc = cli.main(["--workdir", run, "--generate", S2, "--generate", DATE, "--condition", f"{DEM}={dem}",
                   "--condition", f"{LULC}={lulc}", "--lat", "46.0", "--lon", "7.5", "--n-samples", "2",
                   "--steps", "2", "--seed", "3", "--guidance", "1.5", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "sample" in err and "4/4" in err  # progress: 2 steps, each with and without the conditions
    for name in ("sample_000.tif", "sample_001.tif", "mean.tif", "std.tif", "q5.tif", "q95.tif"):
        with rasterio.open(out / S2 / name) as src:
            assert src.crs.to_epsg() == 32632 and (src.width, src.height) == (48, 48)
            assert src.transform.almost_equals(Affine(40.0, 0, 399960.0, 0, -40.0, 5100000.0))
            assert src.count == 4
    with rasterio.open(out / S2 / "std.tif") as src:
        assert (src.read() >= 0).all() and src.read().max() > 0  # two different samples
    assert (out / "sheet.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["footprint_corner"] == [399960.0, 5100000.0] and summary["footprint_side_m"] == 1920.0
    assert summary["guidance"] == 1.5
    assert len(summary["scalars"][DATE]["samples"]) == 2
    np.datetime64(summary["scalars"][DATE]["samples"][0])  # ISO days
    assert f"{S2}/sample_001.tif" in summary["files"] and "sheet.png" in summary["files"]


def test_scalar_conditions_only_centre_a_utm_footprint(run, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["--workdir", run, "--generate", DEM, "--lat", "-33.9", "--lon", "18.4", "--date", "2020-02-02",
                   "--n-samples", "1", "--steps", "1", "--sampler", "dpm++", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    with rasterio.open(out / DEM / "sample_000.tif") as src:
        assert src.crs.to_epsg() == 32734 and src.res == (120.0, 120.0)
        fp = geo.Footprint.from_grid(src.crs, src.transform, src.width)
    assert fp.centre_latlon() == pytest.approx((-33.9, 18.4), abs=1e-6)


@pytest.mark.parametrize("extra,message", [
    ([], "nothing to generate"),
    (["--generate", S2, "--condition", f"{DEM}=missing.tif"], "file not found"),
    (["--generate", S2, "--condition", f"{DATE}=x.tif"], "scalar modalities take --lat/--lon or --date"),
    (["--generate", S2, "--condition", "DEM_DEM"], "expected NAME=VALUE"),
    (["--generate", S2, "--date", "2020-01-01"], "cannot place the outputs on the map"),
    (["--generate", S2, "--lat", "3"], "give --lat and --lon together"),
    (["--generate", "S1RTC_vh_vv", "--lat", "3", "--lon", "4"], "unknown modality 'S1RTC_vh_vv'"),
    (["--generate", S2, "--lat", "3", "--lon", "4", "--date", "June"], "cannot read 'June' as a date"),
])
def test_errors(run, tmp_path, capsys, extra, message):
    rc = cli.main(["--workdir", run, "--out", str(tmp_path), "--steps", "1", *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_console_entry_help():
    out = subprocess.run([sys.executable, "-m", "copgen_jax.inference.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--condition NAME=PATH.tif" in out and "--n-samples" in out
