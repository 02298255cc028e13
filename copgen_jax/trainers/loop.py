"""One training loop for every model of the project (backbone, tokenizers).

A *task* supplies what differs between models:
  create_model(rngs) -> nnx.Module
  loss(model, batch, keys, step) -> (scalar loss, {name: scalar})   pure, jit-able; ``keys``
      holds one random key per example (``copgen_jax.draws``)
  make_iterator(process_index, process_count, seed) -> per-process numpy batches
      with get_state() / set_state(state) for exact resumption
  images(model, batch) -> {name: HWC uint8}   optional, for TensorBoard
  batch_shapes(global_batch) -> ShapeDtypeStruct tree of a batch   optional, to compile abstractly

The loop owns the rest: mesh and shardings, AdamW with warm-up, an EMA with a warmed-up
decay, micro-batches, one jitted step, logging, Orbax checkpoints, resume and preemption.
"""
from __future__ import annotations

import logging
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from copgen_jax import checkpoint, draws, parallel
from copgen_jax.trainers.metric_writer import MetricLogger


def learning_rate_schedule(optim, total_steps: int | None = None):
    """Linear warm-up, then constant (SPEC §5) or polynomial decay (tokenizers).

    ``optim.decay_steps`` 0 decays over what is left of a ``total_steps`` run, so the rate
    reaches ``end_lr`` at its last step whatever ``train.steps`` is overridden to.
    """
    warmup = optax.linear_schedule(0.0, optim.lr, max(optim.warmup_steps, 1))
    if optim.schedule == "polynomial":
        decay = optim.decay_steps
        if not decay:
            if total_steps is None:
                raise ValueError("optim.decay_steps=0 decays to the end of the run: pass its total_steps")
            decay = max(total_steps - optim.warmup_steps, 1)  # a run inside its warm-up never decays
        after = optax.polynomial_schedule(optim.lr, optim.end_lr, optim.power, decay)
    else:
        after = optax.constant_schedule(optim.lr)
    return optax.join_schedules([warmup, after], [optim.warmup_steps])


def make_optimizer(optim, total_steps: int | None = None):
    schedule = learning_rate_schedule(optim, total_steps)
    tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    if optim.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    return tx, schedule


class TrainState(nnx.Module):
    """Model, optimizer and EMA weights: everything a step updates."""

    def __init__(self, model: nnx.Module, tx):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.ema = nnx.clone(model)


def _microbatched_grads(task, graphdef, params, batch, keys, step, microbatches, grad_shardings):
    """Mean loss and gradients over ``microbatches`` slices of the batch (one lax.scan).

    Slices are strided (example i goes to slice i % microbatches), so each keeps the
    batch's even spread over the devices. The summed gradients are held in the
    parameters' own sharding, so under FSDP each device keeps only its shard and the
    partitioner reduce-scatters each slice's gradients instead of all-reducing them.
    Each slice's loss is its own mean, so the result equals the whole batch's when the
    slices hold equally many targets (as without modality dropout).
    """
    def loss_of(p, micro, micro_keys):
        return task.loss(nnx.merge(graphdef, p), micro, micro_keys, step)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    if microbatches == 1:
        (loss, aux), grads = grad_fn(params, batch, keys)
        return (loss, aux), parallel.constrain_shardings(grads, grad_shardings)

    def strided(x):
        x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
        return parallel.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
    slices = jax.tree.map(strided, (batch, keys))

    def body(total, micro):
        (loss, aux), grads = grad_fn(params, *micro)
        grads = parallel.constrain_shardings(grads, grad_shardings)
        return jax.tree.map(jnp.add, total, ((loss, aux), grads)), None

    first = jax.tree.map(lambda x: x[0], slices)
    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, *first))
    zero = (zero[0], parallel.constrain_shardings(zero[1], grad_shardings))
    total, _ = jax.lax.scan(body, zero, slices)
    return jax.tree.map(lambda x: x / microbatches, total)


def ema_rate(optim, step):
    """The EMA's decay at ``step``: ``optim.ema_rate``, warmed up as min(rate, (1 + t) / (10 + t)).

    Without the warm-up the average keeps ``rate ** t`` of the random initial weights
    (9% after 1,200 steps at 0.998) and much of the first, poor steps: short runs then
    sample worse from their EMA than from their raw weights. Past t = 9 rate / (1 - rate)
    the two agree; ``optim.ema_warmup = False`` gives the release's constant rate.
    """
    if not optim.ema_warmup:
        return jnp.float32(optim.ema_rate)
    t = step.astype(jnp.float32)
    return jnp.minimum(optim.ema_rate, (1.0 + t) / (10.0 + t))


def train_step(task, cfg, schedule, state: TrainState, batch, rng, grad_shardings=None):
    """One optimizer step; pure (state in, state out)."""
    step = state.optimizer.step[...]
    graphdef, params = nnx.split(state.model, nnx.Param)
    keys = parallel.constrain(draws.example_keys(rng, jax.tree.leaves(batch)[0].shape[0]), ("batch",))
    (loss, aux), grads = _microbatched_grads(task, graphdef, params, batch, keys, step, cfg.train.microbatches,
                                             grad_shardings)
    state.optimizer.update(state.model, grads)
    rate = ema_rate(cfg.optim, step)
    ema = nnx.state(state.ema, nnx.Param)
    nnx.update(state.ema, jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, ema,
                                       nnx.state(state.model, nnx.Param)))
    metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(step))
    return state, metrics


class Trainer:
    """Builds the sharded state and the jitted step for a task on a mesh.

    ``abstract=True`` builds shapes and shardings only (nothing is allocated), for
    ``lower``: the compile-time report of a config on devices it does not have to fill.
    """

    def __init__(self, cfg, task, mesh=None, *, abstract=False):
        self.cfg, self.task = cfg, task
        self.mesh = mesh or parallel.make_mesh(cfg.mesh)
        self.rules = parallel.rules_from_config(cfg.mesh)
        parallel.check_batch(cfg.train.global_batch, self.mesh, cfg.train.microbatches)
        self.tx, self.schedule = make_optimizer(cfg.optim, cfg.train.steps)
        ctor = lambda: TrainState(task.create_model(nnx.Rngs(cfg.seed)), self.tx)  # noqa: E731
        build = parallel.abstract_model if abstract else parallel.create_sharded
        self.state = build(ctor, self.mesh, self.rules)
        self.graphdef, state = nnx.split(self.state)
        self.shardings = parallel.state_shardings(state, self.mesh, self.rules)
        self.grad_shardings = parallel.param_shardings(self.state.model, self.mesh, self.rules)
        self._step = jax.jit(self._pure_step, in_shardings=(self.shardings, None, None),
                             out_shardings=(self.shardings, None), donate_argnums=0)

    def lower(self, batch_shapes=None):
        """The step lowered for abstract arguments (``task.batch_shapes`` by default)."""
        batch_shapes = batch_shapes or self.task.batch_shapes(self.cfg.train.global_batch)
        put = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,  # noqa: E731
                                             sharding=parallel.batch_sharding(self.mesh, len(x.shape)))
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             nnx.state(self.state), self.shardings)
        with parallel.use_mesh(self.mesh, self.rules):
            return self._step.lower(state, jax.tree.map(put, batch_shapes), jax.eval_shape(jax.random.key, 0))

    def _pure_step(self, state, batch, rng):
        with parallel.logical_rules(self.rules):  # the mesh is set by the caller, outside jit
            new, metrics = train_step(self.task, self.cfg, self.schedule, nnx.merge(self.graphdef, state), batch, rng,
                                      self.grad_shardings)
            return nnx.state(new), metrics

    def step(self, batch, rng):
        """Run one step on a global batch; updates ``self.state`` in place."""
        with parallel.use_mesh(self.mesh, self.rules):
            new_state, metrics = self._step(nnx.state(self.state), batch, rng)
        nnx.update(self.state, new_state)
        return metrics

    def global_batch(self, local_batch):
        """Per-process numpy batch -> one global array sharded over data x fsdp."""
        def put(x):
            sharding = parallel.batch_sharding(self.mesh, np.ndim(x))
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        with parallel.use_mesh(self.mesh, self.rules):
            return jax.tree.map(put, local_batch)

    # -- checkpoint items ------------------------------------------------------
    def arrays(self):
        return {"params": nnx.state(self.state.model, nnx.Param),
                "ema_params": nnx.state(self.state.ema, nnx.Param),
                "opt_state": nnx.state(self.state.optimizer)}

    def load(self, restored):
        for name, target in (("params", self.state.model), ("ema_params", self.state.ema),
                             ("opt_state", self.state.optimizer)):
            if restored.get(name) is not None:
                nnx.update(target, restored[name])


class _Preemption:
    """When to save and stop for a preemption.

    Under ``jax.distributed`` every host must enter the collective save at the same
    step: Orbax's ``reached_preemption`` asks the runtime's preemption sync (which
    catches SIGTERM on any host) and all hosts agree on the step. A single process
    sets a flag on SIGTERM and saves at the next step boundary.
    """

    def __init__(self, mgr):
        self.mgr, self.requested = mgr, False
        self.shared = jax.process_count() > 1
        if self.shared:
            return
        try:
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (e.g. inside a test runner thread)
            pass

    def _handler(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
        self.requested = True

    def reached(self, step: int) -> bool:
        if self.shared:
            self.requested = self.requested or self.mgr.reached_preemption(step)
        return self.requested


def train(cfg, workdir, task, *, mesh=None) -> dict:
    """Train ``task`` for ``cfg.train.steps`` steps in ``workdir``, resuming if possible."""
    trainer = Trainer(cfg, task, mesh)
    checkpoint.save_config(workdir, cfg)
    mgr = checkpoint.manager(workdir, keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpoint)
    iterator = task.make_iterator(jax.process_index(), jax.process_count(), cfg.seed)
    start = _resume(mgr, trainer, iterator)
    logger = MetricLogger(workdir, cfg.train.global_batch)
    preempt = _Preemption(mgr)
    rng = jax.random.key(cfg.seed)
    metrics, step = {}, start
    for step in range(start, cfg.train.steps):
        batch = trainer.global_batch(next(iterator))
        metrics = trainer.step(batch, jax.random.fold_in(rng, step))
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            metrics = logger.write(done, metrics)
            _log_images(logger, task, trainer, batch, done)
        stop = preempt.reached(done)
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps or stop:
            checkpoint.save(mgr, done, trainer.arrays(), iterator)
        if stop:
            logging.warning("checkpoint for step %d written after a preemption notice; exiting", done)
            break
    mgr.wait_until_finished()
    mgr.close()
    logger.close()
    return jax.device_get(metrics)


def _resume(mgr, trainer, iterator) -> int:
    step = mgr.latest_step()
    if step is None:
        logging.info("no checkpoint in %s: starting from scratch", mgr.directory)
        return 0
    targets = {k: checkpoint.abstract_like(v) for k, v in trainer.arrays().items()}
    trainer.load(checkpoint.restore(mgr, step, targets, iterator))
    logging.info("resumed from step %d", step)
    return step


def _log_images(logger, task, trainer, batch, step):
    if hasattr(task, "images") and jax.process_index() == 0:
        logger.images(step, task.images(trainer.state.ema, batch))
