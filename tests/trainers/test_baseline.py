"""The deterministic baseline: training roles, x0 loss on targets only, training and resuming,
a predictor with CopGen's interface whose N samples are one prediction."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from copgen_jax import checkpoint, draws
from copgen_jax.trainers.tiny_run import host_initialised
from copgen_jax.evaluate.baseline import Baseline
from copgen_jax.trainers.baseline import BaselineTask, train_baseline
from tests.fixtures.evaluation_run import baseline_run_dir, eval_run_dir, tiny_config

DEM, LULC, S2 = "DEM_DEM", "LULC_LULC", "S2L2A_B02_B03_B04_B08"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return eval_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def baseline(run):
    baseline_run_dir(run)
    return Baseline.load(run)


def keys(present, seed):
    """One key per example of the batch ``present`` describes."""
    return draws.example_keys(jax.random.key(seed), len(next(iter(present.values()))))


def test_roles_random_subsets():
    task = BaselineTask(tiny_config())
    names = task.registry.names
    present = {n: jnp.ones(64, bool) for n in names}
    present[DEM] = jnp.arange(64) % 2 == 0  # DEM missing from every odd example
    target, kept = task.roles(present, keys(present, 0))
    t = np.stack([np.asarray(target[n]) for n in names], 1)
    k = np.stack([np.asarray(kept[n]) for n in names], 1)
    p = np.stack([np.asarray(present[n]) for n in names], 1)
    assert t.any(1).all(), "every example has a target"
    assert not (t & ~p).any() and not (k & ~p).any(), "a missing modality is never a target or a condition"
    assert (k | ~t).all(), "targets stay in the sequence"
    assert 0.3 < t[p].mean() < 0.7  # target_rate 0.5 (plus the forced ones)
    assert (p & ~t & ~k).any() and (p & ~t & k).any()  # conditions kept and dropped both happen


def test_roles_fixed_targets_and_unknown_name():
    cfg = tiny_config()
    cfg.baseline = {"targets": (S2,), "condition_dropout": 0.0}
    task = BaselineTask(cfg)
    present = {n: jnp.ones(8, bool) for n in task.registry.names}
    target, kept = task.roles(present, keys(present, 1))
    assert all(bool(target[n].all()) == (n == S2) for n in target)
    assert all(bool(kept[n].all()) for n in kept)
    cfg.baseline = {"targets": ("S2L2A_B99",)}
    with pytest.raises(ValueError, match="unknown modality 'S2L2A_B99'"):
        BaselineTask(cfg)


def test_loss_is_x0_mse_on_the_targets_only():
    cfg = tiny_config()
    cfg.baseline = {"targets": (S2,), "condition_dropout": 0.0}
    task = BaselineTask(cfg)
    model = host_initialised(lambda: task.create_model(nnx.Rngs(0)), 0)
    rng = np.random.default_rng(0)
    latents = {m.name: jnp.asarray(rng.standard_normal((2, *m.latent_shape)), jnp.float32) for m in task.registry}
    present = {n: jnp.ones(2, bool) for n in latents}
    total, per = task.loss(model, {"latents": latents, "present": present}, keys(present, 0), 0)
    inputs = {**latents, S2: jnp.zeros_like(latents[S2])}
    t = {n: jnp.full((2,), 1000 if n == S2 else 0, jnp.int32) for n in latents}
    want = float(jnp.mean((model(inputs, t, present)[S2] - latents[S2]) ** 2))
    assert float(per[f"loss/{S2}"]) == pytest.approx(want, rel=1e-5)
    assert float(total) == pytest.approx(want, rel=1e-5)
    assert all(float(v) == 0.0 for k, v in per.items() if k != f"loss/{S2}")


def test_trains_into_workdir_baseline_and_resumes(run, baseline):
    out = os.path.join(run, "baseline")
    assert checkpoint.latest_step(out) == 2
    cfg = checkpoint.load_config(out)
    assert cfg.task == "baseline" and cfg.baseline.target_rate == 0.5
    assert cfg.model.to_dict() == checkpoint.load_config(run).model.to_dict()  # the same backbone
    assert train_baseline(run, 2) == out and checkpoint.latest_step(out) == 2  # done: nothing to do
    train_baseline(run, 3)  # asked for more: continues from step 2 in the same run
    assert checkpoint.latest_step(out) == 3 and 2 in [int(p) for p in os.listdir(os.path.join(out, "checkpoints"))]


def test_predictor_returns_identical_samples_that_depend_on_conditions(baseline):
    rng = np.random.default_rng(0)
    dem = rng.uniform(0, 900, (2, 1, 16, 16))
    lulc = np.array([1, 2, 5, 11])[rng.integers(0, 4, (2, 1, 48, 48))]
    gen = baseline.generate([S2], {DEM: dem, LULC: lulc}, n_samples=3, seed=0, steps=50)
    x = gen[S2]
    assert x.shape == (2, 3, 4, 48, 48) and np.isfinite(x).all()
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    np.testing.assert_array_equal(x[:, 0], x[:, 2])
    assert np.abs(x[0, 0] - x[1, 0]).max() > 0, "different conditions, different predictions"
    # Conditions are encoded as one seeded posterior draw (as for the diffusion model); given
    # them, the prediction involves no randomness and no sampler steps.
    again = baseline.generate([S2], {DEM: dem, LULC: lulc}, n_samples=1, seed=0, steps=5)
    np.testing.assert_allclose(again[S2][:, 0], x[:, 0], rtol=1e-5, atol=1e-2)
    assert gen.latents[DEM].shape[:2] == (2, 3)


def test_missing_baseline_says_how_to_train_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train-baseline-steps"):
        Baseline.load(tmp_path)
