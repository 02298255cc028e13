"""U-ViT: official parameter counts, shapes, and presence masking == token dropping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base, huge, large, test as test_config
from copgen_jax import parallel
from copgen_jax.models.backbone import backbone_from_config, ground_distance, ground_sincos, patchify, unpatchify
from copgen_jax.modalities import registry_from_config


def count_params(cfg):
    reg = registry_from_config(cfg)
    model = parallel.abstract_model(lambda: backbone_from_config(cfg, reg, nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))), reg.num_tokens


@pytest.mark.parametrize("module,expected", [(base, 286_986_562), (large, 501_092_674), (huge, 951_274_306)])
def test_official_parameter_counts(module, expected):
    assert count_params(module.get_config()) == (expected, 834)


def tiny(**model_options):
    cfg = test_config.get_config()
    cfg.model.update(model_options)
    reg = registry_from_config(cfg)
    model = parallel.create_sharded(lambda: backbone_from_config(cfg, reg, nnx.Rngs(0)), None, ())
    return cfg, reg, model


def inputs(reg, batch=3, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(reg))
    latents = {m.name: jax.random.normal(k, (batch, *m.latent_shape)) for m, k in zip(reg, keys)}
    timesteps = {m.name: jnp.arange(batch) * 300 + i for i, m in enumerate(reg)}
    return latents, timesteps


def test_patchify_round_trip_and_order():
    x = jnp.arange(2 * 3 * 4 * 6, dtype=jnp.float32).reshape(2, 3, 4, 6)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 6, 12)
    # token 0 = pixels (0,0),(0,1),(1,0),(1,1) with channels innermost: (p1 p2 C)
    np.testing.assert_array_equal(tokens[0, 0, :3], x[0, :, 0, 0])
    np.testing.assert_array_equal(tokens[0, 0, 3:6], x[0, :, 0, 1])
    np.testing.assert_array_equal(unpatchify(tokens, 3, 4, 6, 2), x)


def test_forward_shapes_and_bad_input():
    _, reg, model = tiny()
    latents, timesteps = inputs(reg)
    out = model(latents, timesteps)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in latents.items()}
    bad = dict(latents, DEM_DEM=jnp.zeros((3, 4, 8, 8)))
    with pytest.raises(ValueError, match=r"DEM_DEM: latent has shape \(3, 4, 8, 8\), expected \(B, \(4, 4, 4\)\)"):
        model(bad, timesteps)


@pytest.mark.parametrize("absent,ground_bias", [("DEM_DEM", 0.0), ("3d_cartesian_lat_lon", 0.0), ("DEM_DEM", 2.0)])
def test_presence_mask_equals_physical_removal(absent, ground_bias):
    """Masking a modality out of attention == running without its tokens at all."""
    _, reg, model = tiny(ground_bias=ground_bias)
    latents, timesteps = inputs(reg)
    present = {m.name: jnp.array([True, m.name != absent, True]) for m in reg}
    masked = model(latents, timesteps, present)
    kept = [n for n in reg.names if n != absent]
    dropped = model({n: latents[n] for n in kept}, {n: timesteps[n] for n in kept})
    full = model(latents, timesteps)
    for name in kept:
        # sample 1 has the modality masked: equals the dropped run
        np.testing.assert_allclose(masked[name][1], dropped[name][1], rtol=1e-5, atol=1e-5)
        # samples 0 and 2 see everything: equal the unmasked run
        np.testing.assert_allclose(masked[name][0], full[name][0], rtol=1e-5, atol=1e-5)
        assert not np.allclose(full[name][1], dropped[name][1], atol=1e-4)  # the modality does matter


def _token_rows(reg, name):
    start = len(reg) + sum(m.num_tokens for m in reg if m.name < name)
    return np.arange(start, start + reg[name].num_tokens).reshape(reg[name].grid)


def test_ground_code_is_shared_by_tokens_over_the_same_ground():
    reg = registry_from_config(base.get_config())
    code = ground_sincos(reg, 64)
    s2, lulc = _token_rows(reg, "S2L2A_B02_B03_B04_B08"), _token_rows(reg, "LULC_LULC")
    m20, m60 = _token_rows(reg, "S2L2A_B05_B06_B07_B11_B12_B8A"), _token_rows(reg, "S2L2A_B01_B09")
    np.testing.assert_array_equal(code[s2], code[lulc])  # 10 m grids: token for token
    np.testing.assert_allclose(code[m60[0, 0]], code[m20[1, 1]], atol=1e-6)  # both centred 3 S2 tokens in
    np.testing.assert_allclose(code[m60[1, 0]], code[m20[4, 1]], atol=1e-6)
    assert np.abs(code[s2[0, 0]] - code[s2[0, 1]]).max() > 0.1  # neighbours differ
    assert not code[:len(reg)].any()  # time tokens have no place
    assert not code[_token_rows(reg, "3d_cartesian_lat_lon").ravel()].any()


def test_ground_initialised_positions_keep_the_parameter_count():
    cfg = test_config.get_config()
    reg = registry_from_config(cfg)
    cfg.model.pos_init = "ground"
    model = parallel.create_sharded(lambda: backbone_from_config(cfg, reg, nnx.Rngs(0)), None, ())
    table = np.asarray(model.pos_embed[...])[0]
    assert np.abs(table - ground_sincos(reg, cfg.model.hidden)).max() < 0.05  # code + trunc-normal(0.02)
    assert count_params(cfg) == count_params(test_config.get_config())
    cfg.model.pos_init = "sincos"
    with pytest.raises(ValueError, match="pos_init='sincos'"):
        parallel.abstract_model(lambda: backbone_from_config(cfg, reg, nnx.Rngs(0)))


def test_ground_distance_is_zero_over_the_same_ground_across_modalities():
    reg = registry_from_config(base.get_config())
    dist = ground_distance(reg)
    s2, lulc = _token_rows(reg, "S2L2A_B02_B03_B04_B08"), _token_rows(reg, "LULC_LULC")
    m20, m60 = _token_rows(reg, "S2L2A_B05_B06_B07_B11_B12_B8A"), _token_rows(reg, "S2L2A_B01_B09")
    np.testing.assert_array_equal(dist, dist.T)
    assert dist[s2[2, 3], lulc[2, 3]] == 0 and dist[s2[2, 3], lulc[2, 4]] == 1 and dist[s2[0, 0], lulc[3, 4]] == 5
    assert dist[m60[0, 0], m20[1, 1]] == 0 and dist[m60[0, 0], s2[2, 2]] == pytest.approx(0.5 ** 0.5)
    scalar = _token_rows(reg, "3d_cartesian_lat_lon").ravel()
    assert not dist[:len(reg)].any() and not dist[scalar].any()  # no place, no penalty


def _sensitivity(model, reg, target, source):
    """|d output[target] token (0, 0) / d input[source]| summed per source token: (grid_h, grid_w)."""
    latents, timesteps = inputs(reg, batch=1)

    def out00(x):
        return model(dict(latents, **{source: x}), timesteps)[target][0, :, :2, :2].sum()
    grad = np.abs(np.asarray(jax.grad(out00)(latents[source])))[0].sum(0)
    p = reg[source].patch
    return grad.reshape(grad.shape[0] // p, p, grad.shape[1] // p, p).sum((1, 3))


def test_ground_bias_makes_a_fresh_model_look_at_the_same_ground():
    """With the 2-D ALiBi penalty a token attends to the other modalities' tokens over its own
    ground first: the prior that short runs need to follow their conditions."""
    for bias, local in ((0.0, False), (4.0, True)):
        _, reg, model = tiny(ground_bias=bias)
        grid = _sensitivity(model, reg, "DEM_DEM", "S2L2A_B02_B03_B04_B08")
        ratio = grid[1, 1] / grid[-1, -1]  # S2 token (1, 1) lies under DEM token (0, 0); (5, 5) far off
        assert (ratio > 10) == local, (bias, ratio)
    params = count_params(tiny(ground_bias=2.0)[0])[0] - count_params(tiny()[0])[0]
    cfg = test_config.get_config()
    assert params == (cfg.model.depth + 1) * cfg.model.heads  # one slope per head and block


def _loss_and_grads(model, reg):
    latents, timesteps = inputs(reg)
    graphdef, state = nnx.split(model)

    def loss(state):
        out = nnx.merge(graphdef, state)(latents, timesteps)
        return sum(jnp.mean(jnp.square(o)) for o in out.values())
    return jax.jit(jax.value_and_grad(loss))(state)


@pytest.mark.parametrize("options", [dict(scan_blocks=True), dict(remat_policy="full"),
                                     dict(scan_blocks=True, remat_policy="dots"),
                                     dict(scan_blocks=True, remat_policy="dots_no_batch", ground_bias=1.0)])
def test_scanned_and_rematerialised_blocks_change_nothing_but_memory(options):
    """Same parameters (one module per block), same loss and gradients as the plain unrolled stack."""
    base_options = {"depth": 4, "ground_bias": options.get("ground_bias", 0.0)}
    _, reg, plain = tiny(**base_options)
    _, _, other = tiny(**(base_options | options))
    assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(other))
    (loss, grads), (loss2, grads2) = _loss_and_grads(plain, reg), _loss_and_grads(other, reg)
    assert float(loss) == pytest.approx(float(loss2), rel=1e-6)
    for g, g2 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g2), rtol=1e-4, atol=1e-6)


def test_remat_cuts_what_a_scanned_step_keeps():
    """Compiled forward + backward of a deeper stack: remat "full" keeps a fraction of the temporaries."""
    def temp_bytes(policy):
        cfg, reg, model = tiny(depth=8, remat_policy=policy, scan_blocks=True)
        latents, timesteps = inputs(reg, batch=16)
        graphdef, state = nnx.split(model)

        def loss(state):
            return sum(jnp.sum(o) for o in nnx.merge(graphdef, state)(latents, timesteps).values())
        return jax.jit(jax.grad(loss)).lower(state).compile().memory_analysis().temp_size_in_bytes
    assert temp_bytes("full") * 2 < temp_bytes("none")


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="model.remat_policy='some'"):
        tiny(remat_policy="some")
