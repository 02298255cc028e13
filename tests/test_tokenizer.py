"""Modality tokenizers: layout, shapes, losses, GAN gradient separation, scale factors, encoding."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tokenizer as official_config
from configs import tokenizer_test
from copgen_jax import encode, parallel, shard_writer, shards, tfrecord
from copgen_jax.modalities import build_registry, registry_from_config
from copgen_jax.models.tokenizer import AutoencoderKL, autoencoder_from_config, outputs_to_pixels
from copgen_jax.tokenizer_eval import evaluate_tokenizer, evaluation_units
from copgen_jax.tokenizer_store import build_model, export_tokenizer, load_tokenizer, read_scale_factor
from copgen_jax.tokenizer_task import TokenizerTask
from copgen_jax.train import Trainer

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
    ae = build_model(dem_task).autoencoder
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
    cfg = config("LULC_LULC", names=("LULC_LULC",), disc_start=3)
    cfg.modalities.pixel_scale = 8  # 24 px
    task = TokenizerTask(cfg)
    assert task.modality.pixel_shape == (10, 24, 24)
    model = build_model(task)
    batch = {"pixels": jnp.asarray(next(task.make_iterator(0, 1, 0))["pixels"][:4])}
    graphdef, params = nnx.split(model, nnx.Param)
    terms = ("loss", "disc_loss", "g_loss", "nll")

    @jax.jit
    def gradients(p, step):  # d term / d params for every term at once
        def f(p):
            loss, aux = task.loss(nnx.merge(graphdef, p), batch, jax.random.key(1), step)
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
    with pytest.raises(ValueError, match="16 px is too small for a 3-layer discriminator"):
        TokenizerTask(config("DEM_DEM", disc_layers=3))
