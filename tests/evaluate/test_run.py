"""The evaluation runner on a tiny run: footprint grouping, modality groups, evaluation units,
the three benchmarks for the diffusion model and the baseline, report files, skips, resuming."""
import json
import math
import os
import sys

import numpy as np
import pytest

from tests import ROOT
from copgen_jax import evaluate
from copgen_jax.evaluate.__main__ import parse_args
from copgen_jax.evaluate.benchmarks import Settings, _locations, narrowing_levels, summarise
from copgen_jax.evaluate.data import Group, eval_units, resolve
from copgen_jax.data.footprints import by_location, read_footprints
from copgen_jax.inference.copgen import CopGen
from copgen_jax.modalities import build_registry, registry_from_config
from tests.fixtures.evaluation_run import OBSERVATIONS, eval_run_dir, tiny_config

DEM, LULC, S1, S2 = "DEM_DEM", "LULC_LULC", "S1RTC_vh_vv", "S2L2A_B02_B03_B04_B08"
LOC = "3d_cartesian_lat_lon"
TASKS = ("S1RTC->S2L2A", "S2L2A infill")  # one that runs, one this registry cannot run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return eval_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval"))
    settings = Settings(samples=3, steps=2, chunk=1)  # one input per call: one compile per task
    results = evaluate.evaluate(run, evaluate.BENCHMARKS, evaluate.MODELS, settings, out,
                                train_baseline_steps=2, tasks=TASKS)
    return out, results, settings


def _numbers(tree):
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_records_grouped_by_footprint_across_observations(run):
    registry = registry_from_config(tiny_config())
    records = list(read_footprints(os.path.join(run, "data", "pixels"), registry, "test"))
    groups = by_location(records)
    assert len(groups) == 1 and len(records) == OBSERVATIONS
    (cell, row, col), obs = next(iter(groups.items()))
    assert [r["observation"] for r in obs] == list(range(OBSERVATIONS))
    assert all((r["cell_id"], r["row"], r["col"]) == (cell, row, col) and r["split"] == "test" for r in obs)
    assert len({r["date"] for r in obs}) == OBSERVATIONS  # different dates ...
    for name in (DEM, LULC):  # ... of one footprint: the same terrain and land cover
        assert all(np.array_equal(r["pixels"][name], obs[0]["pixels"][name]) for r in obs)
    assert not np.array_equal(obs[0]["pixels"][S2], obs[1]["pixels"][S2])
    assert obs[0]["pixels"][S2].shape == (4, 48, 48) and obs[0]["pixels"][S2].max() > 100  # DN, not [-1, 1]
    assert set(np.unique(obs[0]["pixels"][LULC])) <= set(registry[LULC].codec.codes)
    assert all(r["crs"] and len(r["transform"]) == 6 for r in obs)  # georeferencing kept


def test_groups_follow_the_registry():
    full = build_registry()
    finest, _ = resolve(full, [Group("Core-S2L2A", "image", "finest")])
    coarser, _ = resolve(full, [Group("Core-S2L2A", "image", "coarser")])
    assert finest == (S2,)
    assert coarser == ("S2L2A_B01_B09", "S2L2A_B05_B06_B07_B11_B12_B8A")
    assert Group("Core-S2L2A", "image", "coarser").label(full) == "S2L2A 20/60 m"
    small = registry_from_config(tiny_config())
    names, missing = resolve(small, [Group("Core-S2L2A", "image", "finest"), Group("Core-S2L1C")])
    assert names == (S2,) and missing == ["S2L1C"]
    levels, skipped = narrowing_levels(small)
    assert [label for label, _ in levels] == ["nothing", "DEM", "DEM + LULC", "DEM + LULC + S1RTC"]
    assert levels[-1][1] == (DEM, LULC, S1) and skipped == ["+ S2L1C: the run has no modality for it"]


def test_evaluation_units():
    reg = build_registry()
    np.testing.assert_allclose(eval_units(reg[S2], np.full((4, 2, 2), 2500.0)), 0.25)
    s1 = eval_units(reg[S1], np.array([1.0, 0.1, 1e-9, 0.0, 100.0]))
    np.testing.assert_allclose(s1, [0.0, -10.0, -50.0, -50.0, 10.0])  # dB clipped to [-50, 10]
    np.testing.assert_array_equal(eval_units(reg[LULC], np.array([[[0, 1, 11]]])), [[0, 1, 9]])
    np.testing.assert_array_equal(eval_units(reg[DEM], np.array([[[-3.0, 812.5]]])), [[[-3.0, 812.5]]])


def test_locations_span_held_out_cells_first():
    groups = {(cell, r, c): [] for cell in ("a", "b", "c") for r in (0, 1) for c in (0, 1)}
    assert _locations(groups, 3) == [("a", 0, 0), ("b", 0, 0), ("c", 0, 0)]
    assert _locations(groups, 4)[-1] == ("a", 0, 1)
    assert sorted(_locations(groups, 0)) == sorted(groups)


def test_summarise_ignores_non_finite_values():
    got = summarise([{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 2.0}, {"a": float("inf")}])
    assert got["a"] == {"mean": 2.0, "std": 1.0, "n": 2}
    assert got["b"] == {"mean": 2.0, "std": 0.0, "n": 1}
    curves = summarise([{"c": [1.0, 2.0]}, {"c": [3.0, float("nan")]}, {"c": [5.0, 4.0]}])  # element-wise
    assert curves["c"] == {"mean": [3.0, 3.0], "std": [2.0, 1.0], "n": 2}


def test_results_json_has_every_benchmark_and_model(report):
    out, results, settings = report
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert set(saved["benchmarks"]) == {"stochastic", "tasks", "narrowing"}
    assert set(saved["models"]) == {"diffusion", "baseline"} and saved["models"]["baseline"]["step"] >= 2
    assert saved["settings"]["samples"] == settings.samples and saved["locations"] == 1
    st = saved["benchmarks"]["stochastic"]
    assert st["given"] == [DEM, LULC] and st["generated"] == [S2] and st["real_per_location"] == [OBSERVATIONS]
    for model in ("diffusion", "baseline"):
        for space in ("spectra", "structure"):
            for metric in ("precision", "recall", "nn_accuracy", "mmd", "wasserstein", "range_coverage",
                           "intra_real", "intra_generated"):
                stat = st["models"][model][f"{space}/{metric}"]
                assert set(stat) == {"mean", "std", "n"} and stat["n"] == 1 and math.isfinite(stat["mean"])
    task = saved["benchmarks"]["tasks"]["S1RTC->S2L2A"]
    assert task["given"] == [S1] and task["examples"] == OBSERVATIONS
    for model in ("diffusion", "baseline"):
        for metric in ("mae", "mae_best_of_n", "rmse", "psnr", "ssim", "crps", "interval_coverage", "spread"):
            assert math.isfinite(task["models"][model][f"{S2}/{metric}"]["mean"])
    assert task["reliability_levels"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for model in ("diffusion", "baseline"):
        rel, pit = (task["models"][model][f"{S2}/{k}"] for k in ("reliability", "pit"))
        assert len(rel["mean"]) == 9 and rel["n"] == OBSERVATIONS and all(0 <= v <= 1 for v in rel["mean"])
        assert len(pit["mean"]) == 10 and pit["n"] == OBSERVATIONS and sum(pit["mean"]) == pytest.approx(1.0)
        assert rel["mean"][-1] == pytest.approx(task["models"][model][f"{S2}/interval_coverage"]["mean"])
    base = task["models"]["baseline"]
    assert base[f"{S2}/reliability"]["mean"] == [0.0] * 9  # K identical samples cover nothing ...
    assert sum(base[f"{S2}/pit"]["mean"][3:7]) == 0.0  # ... and rank the truth within 1/(K+1) of an end
    assert sum(task["models"]["diffusion"][f"{S2}/pit"]["mean"][3:7]) > 0
    assert all(math.isfinite(x) for x in _numbers(saved["benchmarks"]["narrowing"]))


def test_narrowing_has_one_row_per_conditioning_level(report):
    _, results, _ = report
    nar = results["benchmarks"]["narrowing"]
    assert [lv["given"] for lv in nar["levels"]] == [[], [DEM], [DEM, LULC], [DEM, LULC, S1]]
    assert nar["skipped"] == ["+ S2L1C: the run has no modality for it"] and nar["examples"] == OBSERVATIONS
    for lv in nar["levels"]:
        for model in ("diffusion", "baseline"):
            assert set(lv["models"][model]) == {"pixel_std", "interval_coverage", "crps", "mae_ensemble_mean",
                                                "reliability", "pit"}
            assert len(lv["models"][model]["reliability"]["mean"]) == 9 and len(lv["models"][model]["pit"]["mean"]) == 10
        assert lv["models"]["diffusion"]["pixel_std"]["mean"] > 0


def test_baseline_collapses_and_diffusion_spreads(report):
    _, results, _ = report
    st = results["benchmarks"]["stochastic"]["models"]
    assert st["baseline"]["spectra/intra_generated"]["mean"] == 0.0
    assert st["baseline"]["pixel_std/generated"]["mean"] == 0.0
    assert st["diffusion"]["spectra/intra_generated"]["mean"] > 0
    assert st["diffusion"]["pixel_std/generated"]["mean"] > 0
    for lv in results["benchmarks"]["narrowing"]["levels"]:
        base = lv["models"]["baseline"]
        assert base["pixel_std"]["mean"] == 0.0
        assert base["crps"]["mean"] == pytest.approx(base["mae_ensemble_mean"]["mean"])  # CRPS of a point = MAE
    task = results["benchmarks"]["tasks"]["S1RTC->S2L2A"]["models"]["baseline"]
    assert task[f"{S2}/spread"]["mean"] == 0.0
    assert task[f"{S2}/mae"]["mean"] == pytest.approx(task[f"{S2}/mae_best_of_n"]["mean"])


def test_task_the_run_cannot_do_is_skipped_with_a_message(report):
    out, results, _ = report
    skipped = results["benchmarks"]["tasks"]["S2L2A infill"]
    assert skipped == {"skipped": "the run has no modality for S2L2A image (bands coarser than the finest)"}
    with open(os.path.join(out, "results.md")) as f:
        md = f.read()
    assert "- S2L2A infill: skipped (the run has no modality for S2L2A image (bands coarser than the finest))" in md


def test_markdown_tables_and_plots(report):
    out, results, _ = report
    with open(os.path.join(out, "results.md")) as f:
        md = f.read()
    for heading in ("## Stochastic benchmark", "## Tasks", "### S1RTC->S2L2A", "## Uncertainty as conditioning grows"):
        assert heading in md
    assert "| metric | diffusion | baseline |" in md and "| spectra: recall |" in md
    assert "| DEM + LULC + S1RTC | baseline |" in md
    assert md.count("| modality | model | 10% | 20% | 30% | 40% | 50% | 60% | 70% | 80% | 90% |") == 1
    assert md.count("| given | model | 10% |") == 1 and "randomised rank among the K = 3 samples" in md
    assert f"| {S2} | baseline | 0.000 | 0.000 |" in md and "| DEM + LULC + S1RTC | baseline | 0.000 |" in md
    assert md.count("| PIT ends (flat: 0.200) | PIT histogram, low → high |") == 2
    assert results["plots"] == ["stochastic.png", "tasks.png", "narrowing.png", "reliability.png", "pit.png"]
    for name in results["plots"]:
        with open(os.path.join(out, name), "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(os.path.join(out, name)) > 10_000


def test_rerun_reuses_finished_parts_without_loading_models(report, run, monkeypatch):
    out, results, settings = report
    from copgen_jax.evaluate.baseline import Baseline
    from copgen_jax.inference.copgen import CopGen

    def refuse(*args, **kwargs):
        raise AssertionError("a finished benchmark was recomputed")

    monkeypatch.setattr(CopGen, "load", classmethod(refuse))
    monkeypatch.setattr(Baseline, "load", classmethod(refuse))
    again = evaluate.evaluate(run, evaluate.BENCHMARKS, evaluate.MODELS, settings, out, train_baseline_steps=0,
                              tasks=TASKS)
    assert again["benchmarks"] == results["benchmarks"]
    with pytest.raises(ValueError, match="unknown task"):
        evaluate.evaluate(run, ("tasks",), ("diffusion",), settings, out, tasks=("S1->S3",))


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--workdir", "x", "--benchmark", "stochastic,speed"])
    assert "choose from stochastic, tasks, narrowing" in capsys.readouterr().err
    args = parse_args(["--workdir", "x", "--benchmark", "all", "--train-baseline-steps", "5"])
    assert args.benchmark == evaluate.BENCHMARKS and args.train_baseline_steps == 5 and args.model == "both"


def test_conditioning_probe_scores_x0_with_and_without_conditions(run, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import conditioning
    out = tmp_path / "conditioning.json"
    assert conditioning.main([f"--workdir={run}", f"--task={DEM}+{S1}->{LULC}", "--records=3",
                              "--timesteps=1,1000", f"--out={out}"]) == 0
    rows = {r["timestep"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {1, 1000} and all(r["modality"] == LULC for r in rows.values())
    # at n = 1 the noisy latent is nearly x0 itself: any network recovers it
    assert rows[1]["r2_alone"] > 0.9 and rows[1]["r2_given"] > 0.9
    assert all(math.isfinite(r["gain"]) and r["gain"] == r["r2_given"] - r["r2_alone"] for r in rows.values())
    assert rows[1000]["r2_alone"] < rows[1]["r2_alone"]
    with pytest.raises(ValueError, match="no train record .* has all of nothing_here"):
        conditioning.held_out(CopGen.load(run), os.path.join(run, "data", "pixels"), ["nothing_here"], 1, "train")


def test_copgen_encode_gives_the_latents_the_network_takes(run):
    cg = CopGen.load(run)
    records = [r for r in read_footprints(os.path.join(run, "data", "pixels"), cg.registry, "test")
               if DEM in r["pixels"] and LULC in r["pixels"]][:2]
    latents = cg.encode({n: np.stack([r["pixels"][n] for r in records]) for n in (DEM, LULC)}, seed=3)
    assert {n: z.shape for n, z in latents.items()} == {n: (2, *cg.registry[n].latent_shape) for n in (DEM, LULC)}
    again = cg.encode({n: np.stack([r["pixels"][n] for r in records]) for n in (DEM, LULC)}, seed=3)
    np.testing.assert_array_equal(latents[LULC], again[LULC])  # one posterior draw per seed
    t = {n: np.zeros(2, np.int32) for n in latents}
    out = cg.network()(latents, t)
    assert {n: x.shape for n, x in out.items()} == {n: z.shape for n, z in latents.items()}


def _relations_module():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import latent_relations
    return latent_relations


def test_latent_relations_find_a_relation_that_exists_and_none_that_does_not():
    rel = _relations_module()
    rng = np.random.default_rng(0)
    src = rng.standard_normal((64, 2, 4, 4)).astype(np.float32)  # coarse grid, upsampled 3x onto 12 x 12
    fine = np.repeat(np.repeat(src, 3, 2), 3, 3)
    related = np.concatenate([2 * fine[:, :1] + 1, np.tanh(fine[:, 1:]) * fine[:, :1]], 1)
    unrelated = rng.standard_normal(related.shape).astype(np.float32)
    split = lambda x: (x[:48], x[48:])  # noqa: E731
    for target, lo, hi in ((related, 0.9, 1.0), (unrelated, -1.0, 0.05)):  # noise: nothing, or overfit
        (s_tr, s_te), (t_tr, t_te) = split(src), split(target)
        scores = rel.relation((s_tr, t_tr), (s_te, t_te), mlp_steps=300)
        assert lo < scores["mlp"] <= hi and lo < scores["linear"] <= hi, scores
        assert scores["test_records"] == 16
    # the non-linear half of the relation is beyond the linear predictor
    assert rel.relation((src[:48], related[:48, 1:]), (src[48:], related[48:, 1:]), mlp_steps=300)["linear"] < 0.5
    # grids whose sides do not divide (a 16 px DEM at 1/2 under a 48 px land cover at 1/4): each
    # target cell reads the source cell under its centre, and which third of it it lies in
    assert rel.neighbourhoods(src, (6, 6)).shape == (64 * 36, 9 * 2 + 9)
    centre = rel.neighbourhoods(src, (6, 6))[:, 4 * 2:5 * 2].reshape(64, 6, 6, 2)
    np.testing.assert_array_equal(centre[:, :, :, 0], src[:, 0][:, [0, 1, 1, 2, 3, 3]][:, :, [0, 1, 1, 2, 3, 3]])
    dem = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    below = [0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7]  # the 8-cell source under each of 12 centres
    under = np.tanh(dem[:, :, below][:, :, :, below])
    assert rel.relation((dem[:48], under[:48]), (dem[48:], under[48:]), mlp_steps=300)["mlp"] > 0.9
    # a target that varies inside each source cell: found only through the cell offset feature
    ramp = np.tile(np.arange(3, dtype=np.float32), 4)[None, None, None, :]  # 0 1 2 across each source cell
    within = fine[:, :1] * ramp
    assert rel.relation((src[:48], within[:48]), (src[48:], within[48:]), mlp_steps=300)["mlp"] > 0.8
    assert rel.neighbourhoods(src, (12, 12)).shape == (64 * 144, 9 * 2 + 9)
    assert rel.neighbourhoods(src, (4, 4)).shape == (64 * 16, 9 * 2)  # same grid: no offset
    # a footprint-wide value (a scalar source, (N, D), as location or date) reaches every cell
    climate = rng.standard_normal((64, 1)).astype(np.float32)
    shifted = fine[:, :1] + 2 * climate[:, :, None, None]
    both = rel.relation(([src[:48], climate[:48]], shifted[:48]), ([src[48:], climate[48:]], shifted[48:]),
                        mlp_steps=300)
    assert both["linear"] > 0.9, both
    assert rel.relation((src[:48], shifted[:48]), (src[48:], shifted[48:]), mlp_steps=300)["linear"] < 0.5


def test_latent_relations_runs_on_a_runs_latent_shards(run, tmp_path):
    from copgen_jax.latents.encode import encode_shards
    rel = _relations_module()
    latents = os.path.join(run, "data", "latents")
    if not os.path.exists(os.path.join(latents, "manifest.json")):
        encode_shards(os.path.join(run, "tokenizers"), os.path.join(run, "data", "pixels"), latents, progress=False)
    out = tmp_path / "relations.json"
    assert rel.main([f"--workdir={run}", f"--pairs={LULC}->{S2},{LOC}+{DEM}->{LULC}", "--mlp-steps=20",
                     f"--out={out}"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["source"], r["target"]) for r in rows] == [(LULC, S2), (f"{LOC}+{DEM}", LULC)]
    assert all(math.isfinite(r["linear"]) and math.isfinite(r["mlp"]) and r["test_records"] > 0 for r in rows)
    with pytest.raises(ValueError, match="unknown modality 'S2L1C_B01'; known: 3d_cartesian_lat_lon"):
        rel.main([f"--workdir={run}", "--pairs=S2L1C_B01->LULC_LULC", f"--out={out}"])
