"""Modality tokenizers: layout, shapes, losses, GAN gradient separation, scale factors, encoding."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tokenizer as official_config
from configs import tokenizer_test
from copgen_jax import draws, parallel
from copgen_jax.latents import encode
from copgen_jax.data import shards
from copgen_jax.data import schema
from copgen_jax.data import tfrecord
from copgen_jax.modalities import build_registry, registry_from_config
from copgen_jax.models.tokenizer import AutoencoderKL, autoencoder_from_config, outputs_to_pixels
from copgen_jax.evaluate.tokenizer import evaluation_units
from copgen_jax.latents.store import (apply_scale_info, build_model, compute_scale_factor, export_tokenizer,
                                       load_tokenizer, read_scale_factor, write_scale_factor)
from copgen_jax.trainers.tokenizer import TokenizerTask
from copgen_jax.trainers.loop import Trainer

# Parameters of the release's AutoencoderKL (ch 128, ch_mult 1,2,4,4, 2 res blocks, z 8, no
# temb, attention only in the middle) counted from its module definitions: 83,704,809 + 2,305 per
# in/out band (conv_in 3*3*128 weights, conv_out 3*3*128 weights + 1 bias per band).
RELEASE_PARAMS = {4: 83_711_724, 10: 83_725_554}


def config(modality="S2L2A_B02_B03_B04_B08", names=None, **tokenizer):
    cfg = tokenizer_test.get_config()
    if names:
        cfg.modalities.names = names
    cfg.tokenizer.modality = modality
    for k, v in tokenizer.items():
        cfg.tokenizer[k] = v
    return cfg


def count(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------------- the model


@pytest.mark.parametrize("bands", sorted(RELEASE_PARAMS))
def test_official_parameter_count(bands):
    model = parallel.abstract_model(lambda: AutoencoderKL(bands, bands, rngs=nnx.Rngs(0)))
    assert count(nnx.state(model, nnx.Param)) == RELEASE_PARAMS[bands]
    # The names a converter maps one to one.
    assert model.encoder.down[2].downsample.conv.kernel.shape == (3, 3, 512, 512)
    assert model.decoder.up[1].block[0].nin_shortcut.kernel.shape == (1, 1, 512, 256)
    assert model.quant_conv.kernel.shape == (1, 1, 16, 16) and model.post_quant_conv.kernel.shape == (1, 1, 8, 8)
    assert model.encoder.mid.attn_1.proj_out.kernel.shape == (1, 1, 512, 512)
    assert not hasattr(model.encoder.down[3], "downsample") and not hasattr(model.decoder.up[0], "upsample")


def test_latent_shapes_of_every_official_modality():
    cfg = official_config.get_config()
    expected = {64: 8, 192: 24, 96: 12, 32: 4}
    for m in build_registry().spatial:
        def run(x, m=m):
            ae = autoencoder_from_config(cfg.tokenizer, m, nnx.Rngs(0))
            mean, logvar = ae.encode(x)
            return mean, logvar, ae.decode(mean)

        with nnx.use_eager_sharding(False):
            mean, logvar, out = jax.eval_shape(run, jax.ShapeDtypeStruct((2,) + m.pixel_shape, jnp.float32))
        assert mean.shape == logvar.shape == (2, 8, expected[m.size], expected[m.size]) == (2,) + m.latent_shape
        assert out.shape == (2,) + m.pixel_shape, m.name
    assert build_registry()["LULC_LULC"].pixel_shape[0] == 10


def test_layout_must_match_the_registry():
    m = build_registry()["DEM_DEM"]  # downsample 8
    cfg = config()
    with pytest.raises(ValueError, match=r"DEM_DEM: tokenizer.ch_mult=\[1, 2, 2\] downsamples by 4"):
        autoencoder_from_config(cfg.tokenizer, m, nnx.Rngs(0))
    cfg.tokenizer.ch_mult, cfg.tokenizer.z_channels = (1, 2, 2, 2), 4
    with pytest.raises(ValueError, match="z_channels=4 but the registry's latent has 8"):
        autoencoder_from_config(cfg.tokenizer, m, nnx.Rngs(0))
    with pytest.raises(ValueError, match="scalar modality"):
        autoencoder_from_config(cfg.tokenizer, build_registry()["mean_timestamps"], nnx.Rngs(0))


@pytest.fixture(scope="module")
def dem_task():
    return TokenizerTask(config("DEM_DEM", disc_layers=0))


def test_encode_decode_deterministic(dem_task):
    ae = build_model(dem_task.cfg).autoencoder
    x = jnp.asarray(next(dem_task.make_iterator(0, 1, 0))["pixels"])

    @nnx.jit
    def run(ae, x, rng):
        mean, logvar = ae.encode(x)
        return mean, logvar, ae(x, sample=False)[0], ae.decode(mean), ae(x, rng)[0], ae(x, jax.random.key(9))[0]

    mean, logvar, recon, decoded, sampled, other = run(ae, x, jax.random.key(3))
    again = run(ae, x, jax.random.key(3))
    assert mean.shape == logvar.shape == (8, 4, 4, 4) and recon.shape == x.shape
    for a, b in zip((mean, logvar, recon, sampled), (again[0], again[1], again[2], again[4])):
        np.testing.assert_array_equal(a, b)  # same input (and key): same output
    np.testing.assert_allclose(recon, decoded, rtol=1e-5, atol=1e-6)
    assert not np.allclose(sampled, other)  # another key, another draw
    # The log-variance is clipped to [-30, 20], as the release does.
    ae.quant_conv.bias[...] = ae.quant_conv.bias[...].at[ae.z_channels:].set(1e3)
    np.testing.assert_array_equal(run(ae, x, jax.random.key(3))[1], 20.0)


# ---------------------------------------------------------------------------- training


def test_tiny_autoencoder_lowers_its_loss(dem_task):
    cfg = dem_task.cfg
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.ema_rate = 3e-3, 1, 0.0
    trainer = Trainer(cfg, dem_task, parallel.make_mesh(cfg.mesh, jax.devices()[:1]))
    batch = trainer.global_batch(next(dem_task.make_iterator(0, 1, 0)))
    rng = jax.random.key(0)
    rec = [float(trainer.step(batch, rng)["rec_loss"]) for _ in range(40)]
    assert rec[-1] < rec[0] / 3, (rec[0], rec[-1])
    images = dem_task.images(trainer.state.ema, batch)
    (key, img), = images.items()
    assert key == "reconstruction/DEM_DEM" and img.dtype == np.uint8 and img.shape == (2 * 16, 2 * 16, 3)


def test_gan_gradients_are_separated_and_weighted():
    # Categorical: decoder logits, cross-entropy, softmax into the discriminator.
    cfg = config("LULC_LULC", names=("LULC_LULC",), disc_start=3, learn_logvar=True)
    cfg.modalities.pixel_scale = 8  # 24 px
    task = TokenizerTask(cfg)
    assert task.modality.pixel_shape == (10, 24, 24)
    model = build_model(task.cfg)
    batch = {"pixels": jnp.asarray(next(task.make_iterator(0, 1, 0))["pixels"][:4])}
    graphdef, params = nnx.split(model, nnx.Param)
    terms = ("loss", "disc_loss", "g_loss", "nll")

    @jax.jit
    def gradients(p, step):  # d term / d params for every term at once
        def f(p):
            loss, aux = task.loss(nnx.merge(graphdef, p), batch, draws.example_keys(jax.random.key(1), len(batch["pixels"])), step)
            return jnp.stack([loss] + [aux[t] for t in terms[1:]]), aux
        return jax.jacrev(f, has_aux=True)(p)

    jac, aux = gradients(params, jnp.asarray(5))
    grad = {t: jax.tree.map(lambda g, i=i: g[i], jac) for i, t in enumerate(terms)}

    def norm(term, part):
        return float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grad[term][part]))))

    assert norm("disc_loss", "autoencoder") == 0.0 and norm("disc_loss", "discriminator") > 0  # stopped inputs
    assert norm("g_loss", "discriminator") == 0.0 and norm("g_loss", "autoencoder") > 0  # stopped discriminator
    np.testing.assert_allclose(flat(grad["loss"]["discriminator"]), flat(grad["disc_loss"]["discriminator"]),
                               rtol=1e-5, atol=1e-8)
    # d_weight = 0.5 ||d nll / dW|| / (||d g_loss / dW|| + 1e-4), W = the decoder's last kernel.
    last = lambda t: np.asarray(grad[t]["autoencoder"]["decoder"]["conv_out"]["kernel"][...])  # noqa: E731
    expected = 0.5 * np.linalg.norm(last("nll")) / (np.linalg.norm(last("g_loss")) + 1e-4)
    np.testing.assert_allclose(float(aux["d_weight"]), expected, rtol=1e-4)
    assert float(aux["disc_factor"]) == 1.0 and 0.0 <= float(aux["accuracy"]) <= 1.0
    assert float(np.abs(grad["nll"]["logvar"][...])) > 0  # the learned output log-variance
    jac, aux = gradients(params, jnp.asarray(2))  # before disc_start: no adversarial gradient
    assert float(aux["disc_factor"]) == 0.0 and float(aux["disc_loss"]) == 0.0
    assert not np.any(flat(jax.tree.map(lambda g: g[0], jac)["discriminator"]))
    onehot = outputs_to_pixels(task.modality, jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 4, 4))))
    assert set(np.unique(onehot)) == {-1.0, 1.0} and np.all(onehot.sum(1) == 2 - 10)


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_lpips_is_refused_and_small_inputs_checked():
    with pytest.raises(ValueError, match="perceptual_weight > 0 needs LPIPS"):
        TokenizerTask(config(perceptual_weight=1.0))
    with pytest.raises(ValueError, match="categorical_loss='dice'"):
        TokenizerTask(config(categorical_loss="dice"))
    with pytest.raises(ValueError, match="16 px is too small for a 3-layer discriminator"):
        TokenizerTask(config("DEM_DEM", disc_layers=3))


# ---------------------------------------------------------------------------- data, scale factors, encoding

REG = registry_from_config(tokenizer_test.get_config())  # lat/lon, DEM 16 px, S2L2A RGBN 48 px
S2, DEM, LATLON = "S2L2A_B02_B03_B04_B08", "DEM_DEM", "3d_cartesian_lat_lon"


def footprints(cell):
    """Four footprints in physical units; DEM absent from the first, the last one held out."""
    for i in range(4):
        rng = np.random.default_rng([int(cell[1:]), i])
        pixels = {S2: rng.uniform(0, 4000, REG[S2].physical_shape), LATLON: np.array([10.0 + i, 20.0 + int(cell[1:])])}
        if i:
            pixels[DEM] = rng.uniform(1, 900, REG[DEM].physical_shape)
        yield {"key": f"{cell}/0/{i}_0", "cell_id": cell, "observation": 0, "row": i, "col": 0,
               "split": "test" if i == 3 else "train", "crs": "EPSG:32631", "date": "2021-06-01",
               "transform": (10.0, 0.0, 500000.0 + 1920 * i, 0.0, -10.0, 4000000.0), "pixels": pixels}


def _pixel_features(cell):
    return (schema.pixel_features(rec, REG) for rec in footprints(cell))


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pixels"))
    shards.build_shards(out, ["c0", "c1", "c2"], _pixel_features, registry=REG, kind=schema.PIXELS,
                              name="px", progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizers_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tokenizers"))
    for seed, name in enumerate((DEM, S2)):
        cfg = config(name, disc_layers=0)
        cfg.seed = seed
        export_tokenizer(os.path.join(root, name), cfg, build_model(cfg, seed), step=7)
    return root


def records(directory, split, kind):
    out = []
    for path in shards.shard_files(directory, split):
        out.append([schema.decode_record(d, REG, kind) for d in tfrecord.read_records(path)])
    return out


def test_pixel_shards_feed_tokenizer_training(pixel_dir):
    cfg = config(DEM, disc_layers=0)
    cfg.data.source, cfg.data.shards, cfg.train.global_batch = "shards", pixel_dir, 3
    cfg.data.shuffle_buffer = 1  # shard order still shuffled; no mixing of epochs within a window
    task = TokenizerTask(cfg)
    train_dem = {r["values"][DEM].tobytes() for group in records(pixel_dir, "train", schema.PIXELS)
                 for r in group if r["present"][DEM]}
    assert len(train_dem) == 6  # 3 cells x 2 train footprints with DEM
    it = task.make_iterator(0, 1, seed=0)
    first = next(it)["pixels"]
    state = it.get_state()
    second = next(it)["pixels"]
    assert first.shape == (3,) + REG[DEM].pixel_shape
    assert {row.tobytes() for row in np.concatenate([first, second])} == train_dem  # present ones only, all of them
    resumed = task.make_iterator(0, 1, seed=0)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["pixels"], second)


def test_scale_factors_computed_and_stored(tokenizers_dir, pixel_dir):
    toks = encode.load_tokenizers(tokenizers_dir, [DEM, S2])
    assert toks[S2].step == 7 and toks[S2].scale_factor is None
    factors = encode.ensure_scale_factors(toks, pixel_dir, batches=10, batch_size=3)
    train = {name: np.concatenate([r["values"][name][None] for g in records(pixel_dir, "train", schema.PIXELS)
                                   for r in g if r["present"][name]]) for name in (DEM, S2)}
    for name, tok in toks.items():
        info = read_scale_factor(tok.run_dir)
        assert info["scale_factor"] == factors[name] == tok.scale_factor and info["step"] == 7
        assert info["examples"] == len(train[name]) and info["count"] == len(train[name]) * np.prod(
            REG[name].latent_shape)
    # 1 / std of z = mean + sigma eps, here with Var z = E[mean^2 + sigma^2] - E[mean]^2 (9 x 576 values).
    mean, logvar = (np.asarray(a, np.float64) for a in toks[S2].encode_fn()(jnp.asarray(train[S2])))
    var = np.mean(mean ** 2 + np.exp(logvar)) - np.mean(mean) ** 2
    np.testing.assert_allclose(factors[S2], 1 / np.sqrt(var), rtol=0.03)
    # Exactly, once the posterior is a point (log-variance clipped to -30): 1 / std of the means.
    ae = toks[DEM].autoencoder
    ae.quant_conv.bias[...] = ae.quant_conv.bias[...].at[ae.z_channels:].set(-1e3)
    exact = compute_scale_factor(toks[DEM], [train[DEM][:3], train[DEM][3:]])
    np.testing.assert_allclose(exact["scale_factor"], 1 / np.std(np.asarray(toks[DEM].encode_fn()(train[DEM])[0],
                                                                            np.float64)), rtol=1e-4)
    assert load_tokenizer(toks[DEM].run_dir).scale_factor == factors[DEM]  # stored with the run
    stored = read_scale_factor(toks[DEM].run_dir)
    write_scale_factor(toks[DEM].run_dir, dict(stored, step=6))  # made for other weights: not used
    assert load_tokenizer(toks[DEM].run_dir).scale_factor is None
    write_scale_factor(toks[DEM].run_dir, stored)
    assert encode.ensure_scale_factors(encode.load_tokenizers(tokenizers_dir, [DEM, S2]), pixel_dir) == factors


def test_centred_latents_decode_as_before(tokenizers_dir, pixel_dir, tmp_path):
    run = str(tmp_path / S2)
    shutil.copytree(os.path.join(tokenizers_dir, S2), run)
    write_scale_factor(run, {"scale_factor": 1.0, "step": 6})  # another step's: ignored, weights stay raw
    tok = load_tokenizer(run)
    x = jnp.concatenate([r["values"][S2][None] for g in records(pixel_dir, "train", schema.PIXELS)
                         for r in g if r["present"][S2]])
    checkpoint_means = np.asarray(tok.encode_fn()(x)[0])
    ae, z = tok.autoencoder, tok.autoencoder.z_channels
    offsets = jnp.arange(z, dtype=jnp.float32) - 1.5  # channel means far from 0, a point posterior
    ae.quant_conv.bias[...] = jnp.concatenate([ae.quant_conv.bias[...][:z] + offsets, jnp.full((z,), -1e3)])
    raw = np.asarray(tok.encode_fn()(x)[0], np.float64)
    decoded = tok.decode_fn()(jnp.asarray(raw, jnp.float32))
    info = compute_scale_factor(tok, [x[:4], x[4:]], center=True)
    np.testing.assert_allclose(info["shift"], raw.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    centred = raw - raw.mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(info["scale_factor"], 1 / centred.std(), rtol=1e-4)
    apply_scale_info(tok, info)
    now = np.asarray(tok.encode_fn()(x)[0])
    np.testing.assert_allclose(now, centred, atol=1e-4)  # encodes z - shift ...
    np.testing.assert_allclose(tok.decode_fn()(jnp.asarray(now)), decoded, atol=1e-4)  # ... decodes it as z
    # Stored with the run, the shift is folded in at every load; without center_latents none is recorded.
    write_scale_factor(run, {"scale_factor": 2.0, "step": 7, "shift": offsets.tolist()})
    loaded = load_tokenizer(run)
    assert loaded.scale_factor == 2.0
    np.testing.assert_allclose(loaded.encode_fn()(x)[0], checkpoint_means - offsets[:, None, None], atol=1e-4)
    assert "shift" not in compute_scale_factor(load_tokenizer(run), [x]) and tok.cfg.tokenizer.center_latents is False


def test_encoding_resumes_after_interruption(tokenizers_dir, pixel_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "latents")
    calls, real = [], encode.make_encoder

    def counted(crash_at):
        def make(toks, batch_size):
            fn = real(toks, batch_size)

            def encode_batch(pixels, present):
                calls.append(len(next(iter(pixels.values()))))
                if len(calls) == crash_at:
                    raise RuntimeError("simulated crash")
                return fn(pixels, present)
            return encode_batch
        return make

    # Per group (cell): 3 train records in batches of 2 and 1, then 1 test record: 3 calls.
    monkeypatch.setattr(encode, "make_encoder", counted(crash_at=5))
    with pytest.raises(RuntimeError, match="simulated crash"):
        encode.encode_shards(tokenizers_dir, pixel_dir, out, batch_size=2, progress=False)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    calls.clear()
    monkeypatch.setattr(encode, "make_encoder", counted(crash_at=-1))
    assert encode.main(["--tokenizers", tokenizers_dir, "--pixels", pixel_dir, "--out", out, "--batch_size", "2"]) == 0
    assert len(calls) == 6  # group 0 was kept; groups 1 and 2 encoded

    manifest = shards.load_manifest(out)
    assert manifest["records"] == {"train": 9, "test": 3} and manifest["kind"] == "latents"
    toks = encode.load_tokenizers(tokenizers_dir, [DEM, S2])
    for name in (DEM, S2):
        assert manifest["registry"][name]["scale_factor"] == read_scale_factor(toks[name].run_dir)["scale_factor"]
    pinned = json.load(open(os.path.join(out, encode.TOKENIZERS_FILE)))
    assert pinned[S2]["step"] == 7 and manifest["source"]["tokenizers"] == pinned
    for split in ("train", "test"):
        for pix, lat in zip(records(pixel_dir, split, schema.PIXELS), records(out, split, schema.LATENTS)):
            assert [r["key"] for r in lat] == [r["key"] for r in pix]  # same records, same order, no duplicates
            for p, z in zip(pix, lat):
                assert z["present"] == p["present"] and z["transform"] == p["transform"] and z["split"] == split
                np.testing.assert_array_equal(z["values"][LATLON], p["values"][LATLON])
                for name in (DEM, S2):
                    if not p["present"][name]:
                        assert name + "/mean" not in z["values"]
                        continue
                    mean, logvar = toks[name].encode_fn()(jnp.asarray(p["values"][name][None]))
                    np.testing.assert_allclose(z["values"][name + "/mean"], mean[0], rtol=1e-5, atol=1e-5)
                    np.testing.assert_allclose(z["values"][name + "/logvar"], logvar[0], rtol=1e-5, atol=1e-5)
    pinned[DEM]["step"] = 8  # other tokenizers behind the same output: refused
    shards.write_json(os.path.join(out, encode.TOKENIZERS_FILE), pinned)
    with pytest.raises(shards.BuildError, match="encoded with other tokenizers"):
        encode.encode_shards(tokenizers_dir, pixel_dir, out, batch_size=2, progress=False)


def test_evaluation_report(tokenizers_dir, pixel_dir, tmp_path):
    from copgen_jax.evaluate import tokenizer as tokenizer_evaluation
    out = str(tmp_path / "eval.json")
    assert tokenizer_evaluation.main(["--tokenizer", os.path.join(tokenizers_dir, S2), "--pixels", pixel_dir,
                                "--out", out, "--batch_size", "2"]) == 0
    report = json.load(open(out))
    assert report["modality"] == S2 and report["split"] == "test"
    assert report["baseline_sides"] == {"bicubic_same_grid": 12, "bicubic_same_values": 12}  # z = C = 4
    assert set(report["results"]) == {"tokenizer", "bicubic_same_grid", "bicubic_same_values"}
    for result in report["results"].values():
        assert result["examples"] == 3 and set(result["per_band"]) == {"B04", "B03", "B02", "B08"}
        assert np.isfinite([result[k] for k in ("mae", "rmse", "psnr", "ssim", "relief_r2")]).all()
        assert 0 < result["mae"] < 1  # reflectance units
    m = REG[S2]
    x = np.random.default_rng(0).uniform(0, 4000, m.physical_shape)
    np.testing.assert_allclose(evaluation_units(m, m.normalize(x)), x / 1e4, rtol=1e-4, atol=1e-6)


def test_relief_r2_scores_each_image_about_its_own_mean():
    """A per-image offset leaves relief R² at 1; noise the size of the relief brings it to about 0."""
    from copgen_jax.evaluate.tokenizer import _Scores
    rng = np.random.default_rng(0)
    target = 1000.0 + rng.normal(0, 10.0, (6, 1, 16, 16)) + rng.uniform(0, 3000, (6, 1, 1, 1))
    offset, noisy = _Scores(REG[DEM]), _Scores(REG[DEM])
    offset.add(target + rng.uniform(-200, 200, (6, 1, 1, 1)), target)  # large MAE, relief intact
    noisy.add(target + rng.normal(0, 10.0, target.shape), target)  # small MAE, relief lost
    assert offset.result()["relief_r2"] > 0.999 and offset.result()["mae"] > 10
    assert abs(noisy.result()["relief_r2"]) < 0.2  # error variance = relief variance: R² ≈ 0
    assert noisy.result()["per_band"]["DEM"]["relief_r2"] == noisy.result()["relief_r2"]


def test_norm_groups_keep_several_channels_per_group():
    """One channel per group would erase each image's brightness; ``norm_groups`` sets the grouping."""
    from copgen_jax.models.tokenizer import GroupNorm

    def build(**kw):
        return parallel.create_sharded(lambda: AutoencoderKL(4, 4, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                                                             z_channels=4, rngs=nnx.Rngs(0), **kw), None, ())
    narrow = build(norm_groups=4)
    assert narrow.encoder.norm_out.groups == 4 and narrow.decoder.norm_out.groups == 4
    assert build().decoder.norm_out.groups == 16  # 16 channels: gcd(32, 16), the release's rule
    x = jnp.linspace(0.0, 1.0, 2 * 8 * 8 * 8).reshape(2, 8, 8, 8)
    per_channel, grouped = (parallel.create_sharded(lambda g=g: GroupNorm(8, rngs=nnx.Rngs(0), groups=g), None, ())
                            for g in (8, 2))
    shifted = x.at[..., :2].add(5.0)  # two channels of a 4-channel group made brighter than the others
    np.testing.assert_allclose(per_channel(shifted), per_channel(x), atol=1e-4)  # the offset is gone
    assert not np.allclose(grouped(shifted), grouped(x), atol=1e-2)
    np.testing.assert_allclose(narrow.decode(narrow.encode(jnp.ones((1, 4, 8, 8)))[0]).shape, (1, 4, 8, 8))
