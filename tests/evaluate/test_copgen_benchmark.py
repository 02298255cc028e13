"""The paper's benchmark command on a two-cell copy of the published data, offline.

The released model (random weights of a small config) and the benchmark's two dataset
repositories sit in a Hugging Face cache laid out as huggingface_hub writes it
(``tests.fixtures.released_hub``, ``tests.fixtures.copgen_benchmark``); with the Hub offline,
huggingface_hub resolves every revision and file from it, as after a real download.
"""
import json
import os

import numpy as np
import pytest
import rasterio

pytest.importorskip("torch")
pytest.importorskip("pyarrow")
hub_constants = pytest.importorskip("huggingface_hub.constants")

from copgen_jax import hub  # noqa: E402
from copgen_jax.evaluate import __main__ as evaluate_cli  # noqa: E402
from copgen_jax.evaluate import copgen_benchmark  # noqa: E402
from tests.fixtures.copgen_benchmark import CELLS, TILE_SHIFT, _tif, put_benchmark  # noqa: E402

@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def released(released_run, tmp_path_factory):
    """(a hub cache with the benchmark's data, the run converted from the released files)."""
    cache = tmp_path_factory.mktemp("benchmark_cache")
    put_benchmark(cache)
    return str(cache), released_run


def evaluate(run, cache, out, *extra):
    return evaluate_cli.main(["--benchmark=copgen", f"--model={run}", f"--hub-cache={cache}", f"--out={out}",
                              "--samples=3", "--steps=2", *extra])


def test_the_window_is_the_training_tiles_centre_crop_on_the_published_grid(tmp_path):
    cell = "100U_200R"
    x, y, crs = CELLS[cell]
    dx, dy, _ = TILE_SHIFT[cell]
    cols = np.tile(np.arange(1056, dtype=np.uint16), (1056, 1))
    rows = cols.T.copy()
    window = copgen_benchmark.window_grid(cell, {cell: {"ul_x": x, "ul_y": y, "crs": crs}})
    assert window.bounds == (x + 4380, y - 4380 - 1920, x + 4380 + 1920, y - 4380)
    for values, offset in ((cols, 4380 - dx), (rows, 4380 + dy)):
        path = tmp_path / "tile.tif"
        path.write_bytes(_tif(values, x + dx, y + dy, 10.0, crs))
        with rasterio.open(path) as src:
            crop = copgen_benchmark.crop_window(src, window)
        assert crop.shape == (1, 192, 192)
        first = crop[0, 0, 0]
        assert first == offset / 10 and crop[0].max() == first + 191
    # A tile that ends inside the window: the rest is zero.
    path.write_bytes(_tif(cols[:, :500], x + dx, y + dy, 10.0, crs))
    with rasterio.open(path) as src:
        crop = copgen_benchmark.crop_window(src, window)
    inside = 500 - int((4380 - dx) / 10)
    assert (crop[0, :, :inside] > 0).all() and (crop[0, :, inside:] == 0).all()


def test_the_benchmark_command_writes_the_table_beside_the_papers(released, tmp_path, capsys):
    cache, run = released
    out = tmp_path / "eval"
    results = evaluate(run, cache, out)["copgen"]
    assert results["cells"] == 2 and results["generated"] == ["S2L2A_B02_B03_B04_B08"]
    assert results["given"] == ["DEM_DEM", "LULC_LULC"]
    ours = results["models"]["diffusion"]
    assert ours["cells"] == 2 and ours["skipped"] == 0
    assert ours["real"]["mean"] == 2.5  # the first cell's mostly-nodata date is dropped
    for key in ("recall", "precision", "nn_accuracy", "range_coverage", "mmd", "interval_coverage", "crps"):
        assert np.isfinite(ours[key]["mean"]), key
    assert 0 <= ours["recall"]["mean"] <= 1 and 0 <= ours["interval_coverage"]["mean"] <= 1
    assert ours["crps"]["mean"] > 0
    printed = capsys.readouterr().out
    assert "| diffusion | 2 |" in printed and "| COP-GEN (paper) | 489 | 0.900 | 0.289 | 0.911 | 0.629" in printed
    written = json.loads((out / "results.json").read_text())
    assert written["data"]["benchmark"]["repo"] == hub.BENCHMARK_REPO
    assert (out / "results.md").read_text() == copgen_benchmark.table(results)
    assert sorted(os.listdir(out / "parts" / "diffusion")) == [f"{c}.json" for c in sorted(CELLS)]

    # Resumable: a cell whose result is missing is computed again, the others are read back. A
    # subset draws the same samples for its cells as the whole set: the seed follows the cell.
    first, second = (out / "parts" / "diffusion" / f"{c}.json" for c in ("100U_200R", "100U_201R"))
    stamp = os.stat(second).st_mtime_ns
    os.remove(first)
    subset = evaluate(run, cache, out, "--cells=1")["copgen"]
    assert subset["cells"] == 1 and first.exists() and os.stat(second).st_mtime_ns == stamp
    assert subset["per_cell"]["diffusion"] == json.loads(json.dumps(results["per_cell"]["diffusion"][:1]))


def test_missing_data_is_a_clear_error(released, tmp_path):
    cache, run = released
    with pytest.raises(hub.HubError, match="'v9'.*not in the cache"):
        evaluate(run, cache, tmp_path / "eval", "--benchmark-revision=v9")
    conditions = tmp_path / "conditions" / "Core-DEM"
    conditions.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="cell 100U_200R: no Core-DEM under"):
        evaluate(run, cache, tmp_path / "eval", f"--conditions-root={conditions.parent}")
    with pytest.raises(SystemExit):
        evaluate_cli.main(["--benchmark=copgen", f"--model={tmp_path / 'nowhere'}"])
