"""The Colab notebook runs headless, top to bottom, on the tiny run."""
import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from tests.fixtures.hub_cache import put_repo
from tests.fixtures.sampling_run import tiny_run_dir

from tests import ROOT  # noqa: E402
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_sampling.ipynb")


def edinburgh_in_hub_cache(run, tmp_path, monkeypatch):
    """The example-region dataset as the Hub holds it (Core-* folders zipped under a top folder),
    in a cache that the notebook's kernel reads offline through huggingface_hub."""
    from copgen_jax import hub
    from copgen_jax.checkpoint import load_config
    from copgen_jax.datasets import build
    from copgen_jax.modalities import registry_from_config
    raw = build.synthetic_raw(str(tmp_path / "world"), registry_from_config(load_config(run)), cells=1,
                              observations=1, seed=3, footprints_per_side=1, progress=False)
    archive = shutil.make_archive(str(tmp_path / "edinburgh"), "zip", os.path.dirname(raw), os.path.basename(raw))
    cache = tmp_path / "hub_cache"
    put_repo(cache, hub.EDINBURGH_REPO, {"edinburgh.zip": archive}, repo_type="dataset")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("conditions", ["synthetic", "edinburgh"])
def test_notebook_executes(tmp_path_factory, tmp_path, monkeypatch, conditions):
    run = tiny_run_dir(tmp_path_factory)  # the tiny run, built once per session
    monkeypatch.setenv("COPGEN_WORKDIR", run)
    monkeypatch.setenv("COPGEN_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("COPGEN_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("COPGEN_NOTEBOOK_CONDITIONS", conditions)
    if conditions == "edinburgh":
        edinburgh_in_hub_cache(run, tmp_path, monkeypatch)
    out = tmp_path / "out"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the sheet and the uncertainty maps
    assert (out / "sheet.png").exists()
    assert (out / "geotiff" / "S2L2A_B02_B03_B04_B08" / "std.tif").exists()
    assert (out / "conditions" / "DEM_DEM.tif").exists()
    assert (out / "gap_sheet.png").exists() and (out / "area_sheet.png").exists()
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "files written" in text and "footprint corner" in text
    assert "std where known: 0.0 DN" in text and "9 windows, 3840 x 3840 m" in text


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    params = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert '"released"' in params  # the published model is the default
    intro = nb.cells[0].source
    assert all(f'`"{choice}"`' in intro for choice in ("released", "demo", "edinburgh", "synthetic"))
