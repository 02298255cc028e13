"""Training-step throughput: median step time, examples/s, FLOP/s and MFU.

MFU = model FLOP/s achieved / the machine's measured matmul ceiling (a large
jitted f32 matmul on the same devices), so the number says how close the step
gets to what this hardware can do, not to a datasheet.

  python benchmarks/train_step.py --config=configs/base.py \
      --config.model.hidden=384 --config.model.depth=12 --config.model.heads=6 \
      --config.train.global_batch=4 --steps=5 --out=benchmarks/results/train_step.json
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

from copgen_jax.backbone_task import BackboneTask  # noqa: E402
from copgen_jax.train import Trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "Config to benchmark.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/train_step.json", "Where to write the JSON.")


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
    times = []
    for i in range(_STEPS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.step(batch, jax.random.key(i + 1)))
        times.append(time.perf_counter() - t0)
        print(f"step {i + 1}/{_STEPS.value}: {times[-1]:.3f} s", flush=True)

    median = statistics.median(times)
    flops = model_flops_per_step(cfg, task.registry)
    ceiling = matmul_ceiling()
    result = {
        "config": {"hidden": cfg.model.hidden, "depth": cfg.model.depth, "heads": cfg.model.heads,
                   "batch": cfg.train.global_batch, "tokens": task.registry.num_tokens, "dtype": cfg.model.dtype,
                   "remat": cfg.model.remat},
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
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in result.items()]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
