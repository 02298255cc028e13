"""Training-step throughput: median step time, examples/s, FLOP/s and MFU.

MFU = model FLOP/s achieved / the machine's measured matmul ceiling (a large
jitted f32 matmul on the same devices), so the number says how close the step
gets to what this hardware can do, not to a datasheet.

With ``--breakdown`` it also times the forward pass and forward + backward
alone, and the step's own matmuls (every forward product of a block, and the
two products its backward adds, at their real shapes) one by one: their sum is
the time the step would take if nothing but its matmuls cost anything, so
``matmul_bound_mfu`` is the most MFU these shapes allow on this machine.

With ``--against-release PATH`` (a clone of the COP-GEN release; PyTorch and einops
from the ``torch`` extra) it also builds the release's network at the same shapes and
times its training step (forward, backward, AdamW, EMA update), alternating one step of
each so that both see the same machine load, and reports both medians and their ratio.

  python benchmarks/train_step.py --config=configs/base.py \
      --config.model.hidden=384 --config.model.depth=12 --config.model.heads=6 \
      --config.train.global_batch=4 --steps=5 --against-release=/path/to/COP-GEN \
      --out=benchmarks/results/train_step_d384.json
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from copgen_jax import draws, parallel  # noqa: E402
from copgen_jax.trainers.backbone import BackboneTask  # noqa: E402
from copgen_jax.trainers.loop import Trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "Config to benchmark.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "Also time forward, forward+backward and the step's matmuls.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/train_step.json", "Where to write the JSON.")
_RELEASE = flags.DEFINE_string("against-release", "", "A clone of the COP-GEN release: time its step alongside.")


def matmul_ceiling(n=2048, repeats=10) -> float:
    """Best sustained f32 FLOP/s of an n x n x n jitted matmul over all devices."""
    devices = jax.device_count()
    x = jnp.ones((devices, n, n), jnp.float32)
    f = jax.jit(jax.vmap(lambda a: a @ a))
    f(x).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 * devices / min(times)


def _best_seconds(f, *args, repeats=5) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def block_matmuls(cfg, registry) -> list[tuple[str, int, int, int, int, int]]:
    """(name, count per step, batch, m, k, n) of every matmul of one training step.

    A forward product (m, k) x (k, n) brings two backward ones: (m, n) x (n, k)
    for the input's gradient and (k, m) x (m, n) for the weight's.
    """
    d, depth, heads, r = cfg.model.hidden, cfg.model.depth, cfg.model.heads, cfg.model.mlp_ratio
    b, t, hd = cfg.train.global_batch, registry.num_tokens, d // heads
    blocks, skips = 2 * (depth // 2) + 1, depth // 2
    forward = [("qkv", blocks, 1, b * t, d, 3 * d), ("q k^T", blocks, b * heads, t, hd, t),
               ("weights v", blocks, b * heads, t, t, hd), ("proj", blocks, 1, b * t, d, d),
               ("fc1", blocks, 1, b * t, d, r * d), ("fc2", blocks, 1, b * t, r * d, d),
               ("skip", skips, 1, b * t, 2 * d, d)]
    out = []
    for name, count, batch, m, k, n in forward:
        out += [(name, count, batch, m, k, n), (f"{name} dx", count, batch, m, n, k),
                (f"{name} dw", count, batch, k, m, n)]
    return out


def matmul_bound(cfg, registry) -> tuple[float, list[dict]]:
    """Seconds the step's matmuls take alone, summed, and one row per product."""
    rows, total = [], 0.0
    f = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b))
    for name, count, batch, m, k, n in block_matmuls(cfg, registry):
        seconds = _best_seconds(f, jnp.ones((batch, m, k)), jnp.ones((batch, k, n)))
        total += count * seconds
        rows.append({"matmul": name, "shape": f"{batch} x ({m} x {k}) x ({k} x {n})", "count": count,
                     "ms": 1e3 * seconds, "gflop_per_s": 2 * batch * m * k * n / seconds / 1e9})
    return total, rows


def phase_seconds(trainer, batch) -> dict:
    """Forward alone and forward + backward alone (no optimizer), best of 3."""
    graphdef, state = nnx.split(trainer.state.model)
    keys = draws.example_keys(jax.random.key(0), trainer.cfg.train.global_batch)

    def loss(state):
        with parallel.logical_rules(trainer.rules):
            return trainer.task.loss(nnx.merge(graphdef, state), batch, keys, 0)[0]
    with parallel.use_mesh(trainer.mesh, trainer.rules):
        return {"forward_s": _best_seconds(jax.jit(loss), state, repeats=3),
                "forward_backward_s": _best_seconds(jax.jit(jax.grad(loss)), state, repeats=3)}


def release_step(cfg, registry, path: str):
    """One training step of the release's network at the config's shapes, as a closure.

    The release's objective (every modality noised at its own timestep, the mean squared
    error of its ε), AdamW with the config's settings and the EMA update, in float32.
    """
    import copy

    import torch

    from copgen_jax.convert.parity import import_release, release_backbone_kwargs
    from copgen_jax.diffusion.schedule import schedule_from_config
    sys.path.insert(0, os.path.abspath(path))
    torch.manual_seed(0)
    net = import_release("libs.copgen_multi_post_ln").COPGEN(**release_backbone_kwargs(cfg, registry))
    ema = copy.deepcopy(net).requires_grad_(False)
    o = cfg.optim
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=(o.b1, o.b2), weight_decay=o.weight_decay)
    schedule = schedule_from_config(cfg)
    alpha_bars = torch.tensor(schedule.alpha_bars, dtype=torch.float32)
    b = cfg.train.global_batch
    x0 = [torch.randn(b, *m.latent_shape) for m in registry]

    def step():
        n = [torch.randint(1, schedule.num_steps + 1, (b,)) for _ in x0]
        eps = [torch.randn_like(x) for x in x0]
        xn = [alpha_bars[t].sqrt().view(-1, 1, 1, 1) * x + (1 - alpha_bars[t]).sqrt().view(-1, 1, 1, 1) * e
              for x, t, e in zip(x0, n, eps)]
        loss = sum((p - e).square().flatten(1).mean(1).mean() for p, e in zip(net(xn, n), eps))
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(o.ema_rate).add_(p, alpha=1 - o.ema_rate)
        return loss.item()
    return step, torch.__version__


def model_flops_per_step(cfg, registry) -> float:
    """Analytic training FLOPs: 3 x forward (backward = 2 x forward) of the U-ViT."""
    d, depth, r = cfg.model.hidden, cfg.model.depth, cfg.model.mlp_ratio
    tokens = registry.num_tokens
    blocks = 2 * (depth // 2) + 1
    per_token_block = 2 * (3 * d * d + d * d + 2 * r * d * d)  # qkv, proj, mlp
    attention = 2 * 2 * tokens * tokens * d  # q k^T and weights @ v
    skips = (depth // 2) * 2 * 2 * d * d * tokens
    embed_heads = sum(2 * 2 * m.patch_dim * d * m.num_tokens for m in registry)
    forward = blocks * (per_token_block * tokens + attention) + skips + embed_heads
    return 3 * forward * cfg.train.global_batch


def main(argv):
    del argv
    cfg = _CONFIG.value
    task = BackboneTask(cfg)
    trainer = Trainer(cfg, task)
    batch = trainer.global_batch(next(task.make_iterator(0, 1, cfg.seed)))
    compiled = trainer._step.lower(nnx.state(trainer.state), batch, jax.random.key(0)).compile()
    cost = compiled.cost_analysis()
    xla_flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))

    t0 = time.perf_counter()
    jax.block_until_ready(trainer.step(batch, jax.random.key(0)))
    warmup = time.perf_counter() - t0
    theirs = None
    if _RELEASE.value:
        theirs, torch_version = release_step(cfg, task.registry, _RELEASE.value)
        theirs()  # warm-up
    times, release_times = [], []
    for i in range(_STEPS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.step(batch, jax.random.key(i + 1)))
        times.append(time.perf_counter() - t0)
        line = f"step {i + 1}/{_STEPS.value}: {times[-1]:.3f} s"
        if theirs is not None:
            t0 = time.perf_counter()
            theirs()
            release_times.append(time.perf_counter() - t0)
            line += f", release {release_times[-1]:.3f} s"
        print(line, flush=True)

    median = statistics.median(times)
    flops = model_flops_per_step(cfg, task.registry)
    ceiling = matmul_ceiling()
    result = {
        "config": {"hidden": cfg.model.hidden, "depth": cfg.model.depth, "heads": cfg.model.heads,
                   "batch": cfg.train.global_batch, "tokens": task.registry.num_tokens, "dtype": cfg.model.dtype,
                   "remat_policy": cfg.model.remat_policy, "scan_blocks": cfg.model.scan_blocks,
                   "attention": cfg.model.attention, "microbatches": cfg.train.microbatches},
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "first_step_s (compile + run)": warmup,
        "median_step_s": median,
        "examples_per_s": cfg.train.global_batch / median,
        "model_flops_per_step": flops,
        "xla_flops_per_step": xla_flops,
        "achieved_flops_per_s": flops / median,
        "matmul_ceiling_flops_per_s": ceiling,
        "mfu": flops / median / ceiling,
    }
    if theirs is not None:
        result.update({"release": f"{_RELEASE.value} (PyTorch {torch_version}, float32)",
                       "release_median_step_s": statistics.median(release_times),
                       "ratio_to_release": median / statistics.median(release_times),
                       "step_s": times, "release_step_s": release_times})
    if _BREAKDOWN.value:
        result.update(phase_seconds(trainer, batch))
        bound, matmuls = matmul_bound(cfg, task.registry)
        result["matmul_bound_s"] = bound
        result["matmul_bound_mfu"] = flops / bound / ceiling
        result["non_matmul_share"] = 1 - bound / median
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in result.items() if k not in ("step_s", "release_step_s")]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if _BREAKDOWN.value:
        print(f"\n{'matmul':<14}{'shape':<34}{'count':>6}{'ms':>10}{'GFLOP/s':>10}")
        for r in matmuls:
            print(f"{r['matmul']:<14}{r['shape']:<34}{r['count']:>6}{r['ms']:>10.2f}{r['gflop_per_s']:>10.1f}")
        result["matmuls"] = matmuls
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
