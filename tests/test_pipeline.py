"""The embedded default end to end, at a tiny scale: every stage runs, then resumes as done."""
import json
import os

import numpy as np
import pytest

from configs import demo
from tests import ROOT
from copgen_jax import checkpoint
from copgen_jax.pipeline import run_pipeline


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    cfg = demo.get_config()
    cfg.modalities.names = ("3d_cartesian_lat_lon", "DEM_DEM", "S2L2A_B02_B03_B04_B08")
    cfg.model.hidden, cfg.model.depth, cfg.model.heads = 32, 2, 2
    cfg.train.update(steps=3, log_every=3, checkpoint_every=3, global_batch=8, async_checkpoint=False)
    cfg.data.sample_on = "device"  # z drawn inside the jitted step
    cfg.data.shuffle_buffer = 8
    p = cfg.pipeline
    p.cells, p.observations, p.footprints_per_side = 3, 2, 1
    p.tokenizer.model.update(ch=8, scale_factor_batches=1)
    p.tokenizer.train.update(steps=2, log_every=2, checkpoint_every=2, global_batch=8)
    p.tokenizer.per_modality.DEM_DEM.train.update(steps=2, checkpoint_every=2)
    p.tasks = ("DEM_DEM->S2L2A_B02_B03_B04_B08",)
    p.footprints, p.n_samples, p.sample_steps, p.encode_batch = 1, 2, 2, 8
    workdir = tmp_path_factory.mktemp("demo")
    timings = run_pipeline(cfg, workdir)
    return cfg, workdir, timings


def test_every_stage_leaves_its_output(tiny_demo):
    cfg, workdir, _ = tiny_demo
    manifest = json.loads((workdir / "data" / "pixels" / "manifest.json").read_text())
    assert manifest["records"]["train"] > 0 and manifest["records"]["test"] > 0
    for name in ("DEM_DEM", "S2L2A_B02_B03_B04_B08"):
        assert checkpoint.latest_step(workdir / "tokenizers" / name) == 2
        assert (workdir / "tokenizers" / name / "scale_factor.json").exists()
    latents = json.loads((workdir / "data" / "latents" / "manifest.json").read_text())
    assert latents["records"]["train"] == manifest["records"]["train"]
    assert checkpoint.latest_step(workdir) == 3
    report = json.loads((workdir / "report" / "metrics.json").read_text())
    task = report["tasks"]["DEM_DEM->S2L2A_B02_B03_B04_B08"]
    values = task["metrics"]["S2L2A_B02_B03_B04_B08"]
    assert np.isfinite(list(values.values())).all()
    task_dir = next((workdir / "report").glob("task_0_*"))
    assert (task_dir / "sheet_0.png").exists()
    assert len(list((task_dir / "geotiff" / "S2L2A_B02_B03_B04_B08").glob("sample_*.tif"))) == 2


def test_rerun_skips_finished_stages(tiny_demo):
    cfg, workdir, _ = tiny_demo
    before = os.path.getmtime(workdir / "report" / "metrics.json")
    timings = run_pipeline(cfg, workdir)
    assert os.path.getmtime(workdir / "report" / "metrics.json") == before
    assert sum(timings.values()) < 30, timings  # nothing retrained, re-encoded or resampled


def test_guidance_benchmark_reproduces_the_report_at_its_own_weight(tiny_demo, tmp_path):
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import guidance
    cfg, workdir, _ = tiny_demo
    p, out = cfg.pipeline, tmp_path / "guidance.json"
    assert guidance.main([f"--workdir={workdir}", f"--weights=0,{p.guidance}", f"--footprints={p.footprints}",
                          f"--n_samples={p.n_samples}", f"--out={out}"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["guidance.json"]  # metrics only: no sheets or GeoTIFFs
    report = json.loads((workdir / "report" / "metrics.json").read_text())
    rows = json.loads(out.read_text())["rows"]
    task = "DEM_DEM->S2L2A_B02_B03_B04_B08"
    assert {r["metric"] for r in rows} >= {"mae", "crps", "spread"}
    for r in rows:
        expected = report["tasks"][task]["metrics"][r["modality"]][r["metric"]]
        assert r["values"][f"w={p.guidance:g}"] == pytest.approx(expected, rel=1e-5)
    # w = 0 ignores the DEM: other samples (a coverage fraction of this tiny model may still tie)
    assert {r["metric"] for r in rows if r["values"]["w=0"] != r["values"][f"w={p.guidance:g}"]} >= {"mae", "crps"}
    with pytest.raises(SystemExit, match="guidance weights are >= 0"):
        guidance.main([f"--workdir={workdir}", "--weights=-1", f"--out={out}"])


def test_solvers_benchmark_tabulates_every_setting(tiny_demo, tmp_path):
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import solvers
    _, workdir, _ = tiny_demo
    out = tmp_path / "solvers.json"
    assert solvers.main([f"--workdir={workdir}", f"--out={out}"]) == 0
    result = json.loads(out.read_text())
    labels = [s["label"] for s in result["settings"]]
    assert labels == [label for label, *_ in solvers.SETTINGS] and set(result["seconds"]) == set(labels)
    mae = next(r["values"] for r in result["rows"] if r["metric"] == "mae")
    assert set(mae) == set(labels) and mae["ddim50"] != mae["ddim50 seed 1"]  # another seed, other samples


def test_calibration_benchmark_compares_variants_and_fits_a_scale_on_training_places(tiny_demo, tmp_path):
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import calibration
    _, workdir, _ = tiny_demo
    out = tmp_path / "calibration.json"
    assert calibration.main([f"--workdir={workdir}", "--variants=ddim,ddim:guidance=2", "--cells=1", "--samples=2",
                             "--steps=2", "--scale", "--fit-cells=2", f"--out={out}"]) == 0
    result = json.loads(out.read_text())["variants"]
    assert list(result) == ["ddim", "ddim:guidance=2", "ddim scaled"]
    assert all(list(v["levels"]) == ["nothing", "DEM"] for v in result.values())  # the run has no LULC or S1
    # Without conditions guidance has nothing to amplify: the same samples; given the DEM it differs.
    plain, guided = result["ddim"]["levels"], result["ddim:guidance=2"]["levels"]
    assert plain["nothing"] == guided["nothing"] and plain["DEM"]["std"] != guided["DEM"]["std"]
    assert set(result["ddim scaled"]["scale"]) == {"nothing", "DEM_DEM"}
    assert all(v > 0 for v in result["ddim scaled"]["scale"].values())
    assert calibration.parse_variant("dpm++sde:eta=0.5,weights=raw,steps=9") == (
        "dpm++sde", {"sampler": "dpm++sde", "eta": 0.5, "steps": 9}, {"weights": "raw"})
    with pytest.raises(ValueError, match="'eta' is not key=value"):
        calibration.parse_variant("ddim:eta")


def test_report_footprints_span_cells_first():
    from copgen_jax.evaluate.demo_report import pick_footprints

    def rec(cell, r, c, names):
        return {"key": f"{cell}/{r}_{c}", "pixels": dict.fromkeys(names)}
    groups = {(cell, r, c): [rec(cell, r, c, ("a", "b") if cell != "y" else ("a",))]
              for cell in ("x", "y", "z") for r in (0, 1) for c in (0,)}
    keys = [r["key"] for r in pick_footprints(groups, ["a", "b"], 3)]
    assert keys == ["x/0_0", "z/0_0", "x/1_0"]  # cell y lacks "b"; a second location only after every cell
    assert len(pick_footprints(groups, ["a"], 10)) == 6


def test_tokenizer_settings_per_modality():
    import ml_collections

    from copgen_jax.pipeline import tokenizer_config
    cfg = demo.get_config()
    cfg.pipeline.tokenizer.model.norm_groups = 4
    cfg.pipeline.tokenizer.per_modality = ml_collections.ConfigDict(
        {"DEM_DEM": {"model": {"norm_groups": 2}, "train": {"steps": 7}}})
    dem_run, lulc_run = (tokenizer_config(cfg, n, "pixels") for n in ("DEM_DEM", "LULC_LULC"))
    dem, lulc = dem_run.tokenizer, lulc_run.tokenizer
    assert (dem.modality, dem.norm_groups, lulc.modality, lulc.norm_groups) == ("DEM_DEM", 2, "LULC_LULC", 4)
    assert dem.ch == lulc.ch == cfg.pipeline.tokenizer.model.ch
    assert (dem_run.train.steps, lulc_run.train.steps) == (7, cfg.pipeline.tokenizer.train.steps)
    assert dem_run.train.global_batch == lulc_run.train.global_batch
    cfg.pipeline.tokenizer.per_modality = ml_collections.ConfigDict({"DEM_DEM": {"norm_groups": 2}})
    with pytest.raises(ValueError, match="per_modality.DEM_DEM has sections .'norm_groups'.*'model'"):
        tokenizer_config(cfg, "DEM_DEM", "pixels")
