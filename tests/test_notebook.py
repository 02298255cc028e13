"""The Colab notebook runs headless, top to bottom, on the tiny run."""
import os

import nbformat
from nbclient import NotebookClient

from tests.fixtures.sampling_run import tiny_run_dir

from tests import ROOT  # noqa: E402
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_sampling.ipynb")


def test_notebook_executes(tmp_path_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("COPGEN_WORKDIR", tiny_run_dir(tmp_path_factory))  # the tiny run, built once per session
    monkeypatch.setenv("COPGEN_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("COPGEN_NOTEBOOK_TINY", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the sheet and the uncertainty maps
    assert (tmp_path / "sheet.png").exists()
    assert (tmp_path / "geotiff" / "S2L2A_B02_B03_B04_B08" / "std.tif").exists()
    assert (tmp_path / "conditions" / "DEM_DEM.tif").exists()
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "files written" in text and "footprint corner" in text


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert nb.metadata["kernelspec"]["name"] == "python3"
