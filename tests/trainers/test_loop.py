"""Training machinery: overfitting, sharding, mesh invariance, accumulation, resume."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import test as test_config
from copgen_jax import draws, parallel
from copgen_jax.trainers.backbone import BackboneTask
from copgen_jax.trainers.loop import Trainer, ema_rate, learning_rate_schedule, train


def config(**overrides):
    cfg = test_config.get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    return cfg


def mesh_of(n, **axes):
    cfg = config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = axes.get("data", -1), axes.get("fsdp", 1), axes.get("tensor", 1)
    return parallel.make_mesh(cfg.mesh, jax.devices()[:n])


def trimmed(spec):
    """PartitionSpecs compare equal whether or not trailing replicated axes are spelled out."""
    spec = tuple(spec)
    while spec and spec[-1] is None:
        spec = spec[:-1]
    return spec


def first_batch(task, cfg):
    return next(task.make_iterator(0, 1, cfg.seed))


def test_polynomial_decay_reaches_its_end_rate_at_the_last_step():
    optim = test_config.get_config().optim
    optim.update(lr=1e-3, warmup_steps=10, schedule="polynomial", end_lr=1e-5, decay_steps=0)
    for steps in (100, 250):  # decay_steps 0 follows the run's length
        lr = learning_rate_schedule(optim, steps)
        assert float(lr(10)) == pytest.approx(1e-3) and float(lr(steps)) == pytest.approx(1e-5)
        assert float(lr(steps // 2)) > 1e-5
    optim.decay_steps = 40  # an explicit length wins
    assert float(learning_rate_schedule(optim, 250)(50)) == pytest.approx(1e-5)
    optim.decay_steps = 0
    assert float(learning_rate_schedule(optim, 5)(5)) == pytest.approx(5e-4)  # ends inside its warm-up
    with pytest.raises(ValueError, match="decay_steps=0"):
        learning_rate_schedule(optim)


def test_tiny_model_overfits_one_batch():
    cfg = config(**{"optim.lr": 3e-3, "optim.warmup_steps": 1, "optim.ema_rate": 0.0})
    task = BackboneTask(cfg)
    trainer = Trainer(cfg, task, mesh_of(1))
    batch = trainer.global_batch(first_batch(task, cfg))
    rng = jax.random.key(1)  # same noise and timesteps every step: a fixed regression target
    losses = [float(trainer.step(batch, rng)["loss"]) for _ in range(150)]
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_parameters_sharded_by_the_rules():
    cfg = config(**{"model.hidden": 64, "model.heads": 4})
    trainer = Trainer(cfg, BackboneTask(cfg), mesh_of(8, data=2, fsdp=2, tensor=2))
    block = trainer.state.model.in_blocks[0]
    expected = {
        "mlp.fc1.kernel": (block.mlp.fc1.kernel, P("fsdp", "tensor"), (32, 128)),
        "mlp.fc2.kernel": (block.mlp.fc2.kernel, P("tensor", "fsdp"), (128, 32)),
        "attn.qkv": (block.attn.qkv, P("fsdp", None, "tensor", None), (32, 3, 2, 16)),
        "attn.proj": (block.attn.proj, P("tensor", None, "fsdp"), (2, 16, 32)),
        "norm2.scale": (block.norm2.scale, P(None), (64,)),
    }
    for name, (var, spec, shard_shape) in expected.items():
        value = var[...]
        assert trimmed(value.sharding.spec) == trimmed(spec), name
        assert value.addressable_shards[0].data.shape == shard_shape, name
    # optimizer moments live where their parameters live
    mu = trainer.state.optimizer.opt_state[0].mu.in_blocks[0].mlp.fc1.kernel[...]
    assert trimmed(mu.sharding.spec) == ("fsdp", "tensor")
    batch = trainer.global_batch(first_batch(trainer.task, cfg))
    assert trimmed(batch["latents"]["DEM_DEM"].sharding.spec) == (("data", "fsdp"),)


def test_one_step_agrees_between_one_device_and_eight():
    cfg = config()
    results = []
    for mesh in (mesh_of(1), mesh_of(8, data=2, fsdp=2, tensor=2)):
        task = BackboneTask(cfg)
        trainer = Trainer(cfg, task, mesh)
        metrics = trainer.step(trainer.global_batch(first_batch(task, cfg)), jax.random.key(3))
        fc1 = np.asarray(trainer.state.model.out_blocks[0].mlp.fc1.kernel[...])
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]), fc1))
    (l1, g1, w1), (l8, g8, w8) = results
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    np.testing.assert_allclose(g8, g1, rtol=1e-4)
    np.testing.assert_allclose(w8, w1, rtol=1e-4, atol=1e-6)


@dataclasses.dataclass
class LinearTask:
    """A deterministic least-squares task: exact checks of the loop's arithmetic."""
    dim: int = 8

    def create_model(self, rngs):
        return nnx.Linear(self.dim, 1, rngs=rngs)

    def loss(self, model, batch, rng, step):
        err = model(batch["x"])[:, 0] - batch["y"]
        return jnp.mean(err ** 2), {"mae": jnp.mean(jnp.abs(err))}

    def make_iterator(self, process_index, process_count, seed):
        raise NotImplementedError  # batches are fed directly in these tests


def test_microbatches_equal_one_big_batch():
    """Four strided micro-batches on a 2-way FSDP mesh give one big batch's loss and update:
    every example draws from its own key, so the split changes nothing but memory."""
    results = []
    for microbatches in (1, 4):
        cfg = config(**{"train.microbatches": microbatches, "optim.warmup_steps": 1})
        task = BackboneTask(cfg)
        trainer = Trainer(cfg, task, mesh_of(2, data=1, fsdp=2))
        batch = trainer.global_batch(first_batch(task, cfg))
        metrics = trainer.step(batch, jax.random.key(0))
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]),
                        np.asarray(trainer.state.model.out_blocks[0].mlp.fc1.kernel[...])))
    (loss1, norm1, w1), (loss4, norm4, w4) = results
    assert loss1 == pytest.approx(loss4, rel=1e-5) and norm1 == pytest.approx(norm4, rel=1e-4)
    np.testing.assert_allclose(w1, w4, rtol=1e-5, atol=1e-6)


def test_microbatches_that_cannot_split_the_batch_are_refused():
    with pytest.raises(parallel.ShardingError, match="3 micro-batches"):
        Trainer(config(**{"train.microbatches": 3}), LinearTask(), mesh_of(1))


@pytest.mark.parametrize("warmup,rate_at_step_0", [(False, 0.5), (True, 0.1)])
def test_ema_tracks_parameters(warmup, rate_at_step_0):
    cfg = config(**{"optim.ema_rate": 0.5, "optim.warmup_steps": 1, "optim.ema_warmup": warmup})
    trainer = Trainer(cfg, LinearTask(), mesh_of(1))
    before = np.asarray(trainer.state.ema.kernel[...])
    batch = {"x": np.ones((8, 8), np.float32), "y": np.zeros(8, np.float32)}
    trainer.step(trainer.global_batch(batch), jax.random.key(0))
    after_params = np.asarray(trainer.state.model.kernel[...])
    np.testing.assert_allclose(trainer.state.ema.kernel[...],
                               rate_at_step_0 * before + (1 - rate_at_step_0) * after_params, rtol=1e-6)


def test_ema_warmup_forgets_the_initial_weights_then_holds_the_configured_rate():
    optim = config(**{"optim.ema_rate": 0.998}).optim
    rates = np.array([float(ema_rate(optim, jnp.int32(t))) for t in range(6000)])
    assert rates[0] == pytest.approx(0.1) and np.all(np.diff(rates) >= 0)
    assert np.all(rates[4500:] == np.float32(0.998))  # (1 + t) / (10 + t) passes 0.998 at t = 4491
    # the initial weights' share after 1,200 steps: the product of the rates
    assert np.prod(rates[:1200]) < 1e-3 < 0.998 ** 1200 / 10


def test_resumed_run_matches_uninterrupted(tmp_path):
    common = {"train.checkpoint_every": 3, "train.log_every": 1}
    full = train(config(**common, **{"train.steps": 6}), tmp_path / "full", BackboneTask(config()))
    train(config(**common, **{"train.steps": 3}), tmp_path / "split", BackboneTask(config()))
    resumed = train(config(**common, **{"train.steps": 6}), tmp_path / "split", BackboneTask(config()))
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["3", "6"]
    for key in ("loss", "grad_norm", "loss/DEM_DEM"):
        np.testing.assert_allclose(resumed[key], full[key], rtol=1e-6, err_msg=key)


def test_unshardable_batch_is_a_clear_error():
    cfg = config(**{"train.global_batch": 6})
    with pytest.raises(parallel.ShardingError, match="global batch 6 cannot be split over data x fsdp = 4"):
        Trainer(cfg, BackboneTask(cfg), mesh_of(8, data=2, fsdp=2, tensor=2))
    with pytest.raises(parallel.ShardingError, match="needs 16 devices but 8 are available"):
        cfg.mesh.data, cfg.mesh.fsdp = 4, 4
        parallel.make_mesh(cfg.mesh, jax.devices())


def test_bf16_compute_with_remat_keeps_fp32_master_weights():
    cfg = config(**{"model.dtype": "bfloat16", "model.remat_policy": "full"})
    task = BackboneTask(cfg)
    trainer = Trainer(cfg, task, mesh_of(1))
    metrics = trainer.step(trainer.global_batch(first_batch(task, cfg)), jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    assert trainer.state.model.mid_block.mlp.fc1.kernel[...].dtype == jnp.float32
    assert trainer.state.optimizer.opt_state[0].mu.mid_block.mlp.fc1.kernel[...].dtype == jnp.float32


def test_metrics_reach_tensorboard(tmp_path):
    from tensorboardX.proto.event_pb2 import Event

    from copgen_jax.data.tfrecord import read_records
    train(config(**{"train.steps": 4, "train.log_every": 2, "train.checkpoint_every": 4}), tmp_path,
          BackboneTask(config()))
    (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    scalars = {}
    for record in read_records(path):  # event files are CRC-checked TFRecords of Event protos
        event = Event.FromString(record)
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append(event.step)
    assert {"loss", "grad_norm", "lr", "loss/DEM_DEM", "steps_per_s", "examples_per_s"} <= set(scalars)
    assert scalars["loss"] == [2, 4]


class _Recorder:
    """Predicts zeros and keeps what the loss fed it, to check what the objective hands the network."""

    def __call__(self, noisy, timesteps, present):
        self.seen = (noisy, timesteps, present)
        return {n: jnp.zeros_like(x) for n, x in noisy.items()}


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_conditions_enter_clean_at_timestep_zero_without_loss(rate):
    cfg = config(**{"diffusion.condition_rate": rate})
    task = BackboneTask(cfg)
    batch = jax.tree.map(jnp.asarray, first_batch(task, cfg))
    model = _Recorder()
    total, per_mod = task.loss(model, batch, draws.example_keys(jax.random.key(3), cfg.train.global_batch), 0)
    noisy, timesteps, present = model.seen
    expected = 0.0
    for name, x in batch["latents"].items():
        clean = np.asarray(timesteps[name]) == 0
        assert rate or not clean.any()
        assert (rate < 1) or clean.all()
        np.testing.assert_array_equal(np.asarray(noisy[name])[clean], np.asarray(x)[clean])
        if not clean.all():
            assert np.abs(np.asarray(noisy[name])[~clean] - np.asarray(x)[~clean]).max() > 0
        # the zero prediction's loss is the mean squared noise over the noised samples only
        eps = (np.asarray(noisy[name]) - np.sqrt(task.schedule.alpha_bars[np.asarray(timesteps[name])]).reshape(
            (-1,) + (1,) * (x.ndim - 1)) * np.asarray(x))
        eps /= np.sqrt(1 - task.schedule.alpha_bars[np.asarray(timesteps[name])].clip(max=1 - 1e-12)).reshape(
            (-1,) + (1,) * (x.ndim - 1))
        target = ~clean & np.asarray(present[name])
        mse = (eps ** 2).reshape(len(eps), -1).mean(1)
        want = mse[target].sum() / max(target.sum(), 1)
        np.testing.assert_allclose(float(per_mod[f"loss/{name}"]), want, rtol=2e-3)
        expected += want
    np.testing.assert_allclose(float(total), expected, rtol=2e-3)
