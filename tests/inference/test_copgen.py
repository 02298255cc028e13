"""CopGen: loading, conditions held exactly, determinism, drop == mask, sharding, errors."""
import os

import jax
import numpy as np
import pytest

from copgen_jax import CopGen
from copgen_jax.inference import geo
from copgen_jax.inference.stats import sample_stats
from copgen_jax.modalities import ModalityError
from tests.fixtures.sampling_run import DATE, DEM, LATLON, LULC, S2


def conditions(batch=None):
    rng = np.random.default_rng(0)
    lead = () if batch is None else (batch,)
    codes = np.array([1, 2, 4, 5, 11])[rng.integers(0, 5, (*lead, 1, 48, 48))]
    return {DEM: rng.uniform(0, 900, (*lead, 1, 16, 16)), LULC: codes, LATLON: np.array([45.5, 7.25]),
            DATE: "2021-06-17"}


def test_load_from_a_relative_path(run, model, monkeypatch):
    monkeypatch.chdir(os.path.dirname(run))
    relative = CopGen.load(os.path.basename(run))  # as `CopGen.load("runs/demo")` from the checkout
    for a, b in zip(jax.tree.leaves(model._params), jax.tree.leaves(relative._params)):
        np.testing.assert_array_equal(a, b)


def test_load_uses_tokenizer_scale_factors_and_presence_masks(run, model):
    assert model.registry[DEM].scale_factor == 0.5  # from scale_factor.json
    assert model.registry[S2].scale_factor == pytest.approx(0.853416)  # the registry's default
    assert model.default_absent == "drop"  # trained with modality dropout
    step = max(int(p) for p in os.listdir(f"{run}/checkpoints"))
    again = CopGen.load(f"{run}/checkpoints/{step}")
    for a, b in zip(jax.tree.leaves(model._params), jax.tree.leaves(again._params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 999"):
        CopGen.load(run, step=999)


def test_load_the_raw_weights_beside_their_ema(run, model):
    import orbax.checkpoint as ocp
    from copgen_jax.inference.load import _item_path
    raw = CopGen.load(run, weights="raw")
    with ocp.StandardCheckpointer() as ckptr:
        stored = ckptr.restore(_item_path(run, None, "params"))

    def total(tree):  # order-free: the two trees name their leaves differently
        return sum(float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(tree))
    assert len(jax.tree.leaves(stored)) == len(jax.tree.leaves(raw._params))
    assert total(raw._params) == pytest.approx(total(stored), rel=1e-9)
    assert total(raw._params) != pytest.approx(total(model._params), rel=1e-6)  # not the EMA
    with pytest.raises(ValueError, match="weights must be one of"):
        CopGen.load(run, weights="last")


def test_a_centring_tokenizer_needs_its_recorded_shift(run, tmp_path):
    import json
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    tok_dir = copy / "tokenizers" / S2
    cfg = json.loads((tok_dir / "config.json").read_text())
    cfg["tokenizer"]["center_latents"] = True
    (tok_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match=f"centring tokenizer without its {S2} scale_factor.json"):
        CopGen.load(str(copy))


def test_outputs_shapes_units_and_conditions_held_exactly(model):
    cond = conditions()
    gen = model.generate([S2], cond, n_samples=2, steps=2, seed=4, stats=True)
    assert gen[S2].shape == (1, 2, 4, 48, 48) and gen[S2].dtype == np.float64
    # Each condition is one latent, repeated bit for bit in every sample.
    for name in cond:
        lat = gen.latents[name]
        assert lat.shape == (1, 2, *model.registry[name].latent_shape)
        np.testing.assert_array_equal(lat[:, 1], lat[:, 0])
    # Scalars and class maps come back as given; scalar latents decode to the given values.
    np.testing.assert_allclose(gen.conditions[LATLON][0], cond[LATLON])
    np.testing.assert_array_equal(gen.conditions[LULC][0], cond[LULC])
    m = model.registry[LATLON]
    np.testing.assert_allclose(m.denormalize(gen.latents[LATLON][0, 0].reshape(3) / m.scale_factor), cond[LATLON],
                               atol=1e-5)
    d = model.registry[DATE]
    assert d.denormalize(gen.latents[DATE][0, 0].reshape(3)) == np.datetime64(cond[DATE])
    # Statistics over the samples.
    st = gen.stats[S2]
    np.testing.assert_allclose(st["mean"][0], gen[S2][0].mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["std"][0], gen[S2][0].std(0), rtol=1e-4, atol=1e-3)
    assert set(st) == {"mean", "std", "q5", "q50", "q95"}
    assert (st["q5"] <= st["q50"]).all() and (st["q50"] <= st["q95"]).all()


def test_generated_class_maps_and_scalars_in_physical_units(model):
    gen = model.generate([LULC, LATLON, DATE], {DEM: conditions()[DEM]}, n_samples=2, steps=2, stats=True)
    codes = model.registry[LULC].codec.codes
    assert gen[LULC].shape == (1, 2, 1, 48, 48) and np.isin(gen[LULC], codes).all()
    assert gen[LATLON].shape == (1, 2, 2) and (np.abs(gen[LATLON][..., 0]) <= 90).all()
    assert gen[DATE].shape == (1, 2) and gen[DATE].dtype == np.dtype("datetime64[D]")
    st = gen.stats[LULC]
    np.testing.assert_allclose(st["frequencies"].sum(1), 1.0)
    assert np.isin(st["mode"], codes).all() and st["uncertainty"].max() <= 0.5  # 2 samples: agree or split


def test_seed_determinism(model):
    cond = conditions()
    a = model.generate([S2], cond, n_samples=2, steps=2, seed=7)
    b = model.generate([S2], cond, n_samples=2, steps=2, seed=7)
    c = model.generate([S2], cond, n_samples=2, steps=2, seed=8)
    np.testing.assert_array_equal(a[S2], b[S2])
    np.testing.assert_array_equal(a.latents[DEM], b.latents[DEM])
    assert not np.allclose(a[S2], c[S2])
    assert not np.allclose(a[S2][0, 0], a[S2][0, 1])  # the samples differ from each other


def test_drop_equals_full_sequence_with_presence_mask(model):
    """Absent modalities dropped from the sequence == the full sequence with them masked out."""
    cond = {DEM: conditions()[DEM]}
    kw = dict(n_samples=2, steps=3, seed=3)
    drop = model.generate([S2], cond, absent="drop", **kw)
    mask = model.generate([S2], cond, absent="mask", **kw)
    noise = model.generate([S2], cond, absent="noise", **kw)
    np.testing.assert_allclose(drop.latents[S2], mask.latents[S2], rtol=1e-4, atol=1e-4)
    assert not np.allclose(drop.latents[S2], noise.latents[S2], atol=1e-3)


def test_guidance_changes_samples_and_counts_both_evaluations(model):
    cond, ticks = conditions(), []
    kw = dict(n_samples=2, steps=3, seed=4)
    plain = model.generate([S2], cond, **kw)
    np.testing.assert_array_equal(model.generate([S2], cond, guidance=1.0, **kw)[S2], plain[S2])
    guided = model.generate([S2], cond, guidance=3.0, progress=lambda *a: ticks.append(a), **kw)
    assert not np.allclose(guided.latents[S2], plain.latents[S2], atol=1e-4)
    assert guided.settings["guidance"] == 3.0
    assert [t for t in ticks if t[0] == "sample"][-1] == ("sample", 6, 6)  # with and without conditions


def test_samplers_batches_and_compile_cache(model):
    cond = conditions(batch=2)
    cond[DATE] = np.array(["2020-01-01", "2021-07-01"])
    before = len(model._samplers)
    gen = model.generate([S2], cond, n_samples=3, steps=4, sampler="dpm++", seed=1)
    assert gen[S2].shape == (2, 3, 4, 48, 48)  # B = 2 inputs, lat/lon broadcast to both
    np.testing.assert_array_equal(gen.conditions[LATLON][1], cond[LATLON])
    assert gen.settings["spacing"] == "logsnr"
    model.generate([S2], cond, n_samples=3, steps=4, sampler="dpm++", seed=2)
    assert len(model._samplers) == before + 1  # same request shape: compiled once
    # 6 rows are padded to the 8 devices of the data axis and sharded over them.
    assert model.mesh.shape["data"] == jax.device_count() == 8
    assert model._row_sharding(4).spec[0] in ("data", ("data", "fsdp"))
    eta = model.generate([S2], conditions(), n_samples=2, steps=3, eta=1.0, seed=5)
    eta2 = model.generate([S2], conditions(), n_samples=2, steps=3, eta=1.0, seed=5)
    np.testing.assert_array_equal(eta[S2], eta2[S2])


def test_geotiff_conditions_give_the_footprint(model, tmp_path):
    fp = geo.Footprint.centred_on(45.5, 7.25, 1920.0)
    cond = conditions()
    path = geo.write_raster(tmp_path / "dem.tif", cond[DEM].astype(np.float32), model.registry[DEM], fp)
    gen = model.generate([S2], {DEM: path}, n_samples=1, steps=2)
    assert gen.footprints[0].matches(fp)
    np.testing.assert_allclose(gen.conditions[DEM][0], cond[DEM], rtol=1e-6)
    other = geo.write_raster(tmp_path / "lulc.tif", cond[LULC], model.registry[LULC],
                             geo.Footprint.centred_on(46.0, 7.25, 1920.0))
    with pytest.raises(ModalityError, match="cover different footprints"):
        model.generate([S2], {DEM: path, LULC: other}, steps=1)


@pytest.mark.parametrize("generate,cond,match", [
    ([], {}, "nothing to generate"),
    (["S1RTC_vh_vv"], {}, "unknown modality 'S1RTC_vh_vv'"),
    ([S2], {"B99": np.zeros(3)}, "unknown modality 'B99'"),
    ([S2, DEM], {DEM: np.zeros((1, 16, 16))}, "DEM_DEM: both given as a condition and asked to be generated"),
    ([S2, S2], {}, "names a modality twice"),
    ([S2], {DEM: np.zeros((1, 32, 32))}, r"32x32 px given, 16x16 expected at 120.0 m"),
    ([LULC], {S2: np.zeros((3, 48, 48))}, r"3 bands given, 4 expected: B04, B03, B02, B08"),
    ([S2], {DEM: np.full((1, 16, 16), np.nan)}, "DEM_DEM: 256 non-finite values"),
    ([S2], {LULC: np.full((1, 48, 48), 3)}, r"class codes \[3\] are not in the table"),
    ([S2], {DEM: np.zeros((2, 1, 1, 16, 16))}, r"expected \(1, 16, 16\) or \(B, 1, 16, 16\)"),
    ([S2], {DEM: np.zeros((2, 1, 16, 16)), LATLON: np.zeros((3, 2))}, "different batch sizes"),
])
def test_errors_name_the_problem(model, generate, cond, match):
    with pytest.raises(ModalityError, match=match):
        model.generate(generate, cond, steps=1)


def test_tokenizers_of_another_registry_are_refused(model):
    from flax import nnx
    from copgen_jax.models.tokenizer import AutoencoderKL
    backbone = nnx.merge(model._graphdef, model._params)
    with nnx.use_eager_sharding(False):
        halves_once = AutoencoderKL(1, 1, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"the DEM_DEM tokenizer gives 4 channels at 1/2 of 16 px; the backbone "
                                         r"expects \(4, 4, 4\) \(1/4\)"):
        CopGen(model.cfg, model.registry, backbone, {DEM: halves_once})


def test_argument_errors(model):
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        model.generate([S2], n_samples=0, steps=1)
    with pytest.raises(ValueError, match="absent='zero'"):
        model.generate([S2], absent="zero", steps=1)
    with pytest.raises(ValueError, match="unknown sampler"):
        model.generate([S2], sampler="euler", steps=1)


def test_statistics_of_class_maps_and_coordinates(model):
    m = model.registry[LULC]
    samples = np.array([[[[[1, 2]]], [[[1, 2]]], [[[1, 4]]], [[[2, 4]]]]])  # (1, 4, 1, 1, 2)
    st = sample_stats(m, samples)
    np.testing.assert_array_equal(st["mode"][0, 0], [[1, 2]])
    np.testing.assert_allclose(st["uncertainty"][0, 0], [[0.25, 0.5]])
    ll = sample_stats(model.registry[LATLON], np.array([[[10.0, 20.0], [10.0, 20.0]]]))
    np.testing.assert_allclose(ll["mean"][0], [10.0, 20.0], atol=1e-9)
    assert ll["std_km"][0] == pytest.approx(0.0, abs=1e-3)
