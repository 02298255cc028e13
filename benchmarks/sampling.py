"""Sampling latency: per network evaluation and per sample, token dropping vs the full sequence.

The task is the paper's DEM + land cover -> S2L2A RGBN. Modalities neither given nor
generated are either dropped from the token sequence ("drop", what CopGen does for runs
trained with presence masks) or kept as noise at timestep N ("noise": the full sequence,
834 tokens for the official registry, as the reference release always runs it).

Weights are random (host-initialised): latency does not depend on their values. The
tokenizers have the sizes the config's runs would have (configs/demo.py: its pipeline's
tiny autoencoders; otherwise the official 83.7 M-parameter layout).

    python benchmarks/sampling.py --configs=demo,base --steps=2 --out=benchmarks/results/sampling.json
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402

from copgen_jax import flagparse, pipeline  # noqa: E402
from copgen_jax.inference.copgen import CopGen  # noqa: E402
from copgen_jax.models.backbone import backbone_from_config  # noqa: E402
from copgen_jax.models.tokenizer import autoencoder_from_config  # noqa: E402
from copgen_jax.modalities import registry_from_config  # noqa: E402
from copgen_jax.trainers.tiny_run import host_initialised  # noqa: E402
from copgen_jax.defaults import default_config  # noqa: E402

GIVEN = ("DEM_DEM", "LULC_LULC")
TARGET = "S2L2A_B02_B03_B04_B08"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tokenizer_model(cfg, name):
    """The tokenizer a run of ``cfg`` would train for ``name``: the demo pipeline's (with its
    per-modality overrides), otherwise the official layout."""
    if cfg.task == "pipeline":
        return pipeline.tokenizer_config(cfg, name, "").tokenizer
    return default_config().tokenizer


def timed(fn, reps):
    """Median wall time of ``fn()`` (which must block) over ``reps`` runs after one warm-up."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def build(cfg):
    reg = registry_from_config(cfg)
    backbone = host_initialised(lambda: backbone_from_config(cfg, reg, nnx.Rngs(0)), 0)
    aes = {n: host_initialised(lambda n=n: autoencoder_from_config(tokenizer_model(cfg, n), reg[n], nnx.Rngs(0)), i)
           for i, n in enumerate((*GIVEN, TARGET))}
    return reg, CopGen(cfg, reg, backbone, aes)


def per_evaluation(model: CopGen, names, rows, reps):
    """Median seconds of one backbone forward on ``rows`` rows with the modalities ``names``."""
    reg = model.registry
    latents = {n: jnp.zeros((rows, *reg[n].latent_shape), jnp.float32) for n in names}
    t = {n: jnp.full((rows,), 500, jnp.int32) for n in names}
    graphdef = model._graphdef
    fwd = jax.jit(lambda p, x, t: nnx.merge(graphdef, p)(x, t))
    tokens = sum(reg[n].num_tokens + 1 for n in names)
    median, first = timed(lambda: jax.block_until_ready(fwd(model._params, latents, t)), reps)
    return {"tokens": tokens, "rows": rows, "seconds": median, "first_call_seconds": first}


def per_sample(model: CopGen, reg, n_samples, steps, absent, reps):
    rng = np.random.default_rng(0)
    cond = {"DEM_DEM": rng.uniform(0, 1500, reg["DEM_DEM"].physical_shape),
            "LULC_LULC": rng.choice(reg["LULC_LULC"].codec.codes[1:], reg["LULC_LULC"].physical_shape)}
    run = lambda: model.generate([TARGET], cond, n_samples=n_samples, steps=steps, absent=absent)  # noqa: E731
    median, first = timed(run, reps)
    return {"absent": absent, "n_samples": n_samples, "steps": steps, "seconds": median,
            "seconds_per_sample": median / n_samples, "first_call_seconds": first}


def bench(name, args):
    cfg = load_config(name)
    reg, model = build(cfg)
    n = args.n_samples or (4 if name == "demo" else 1)
    steps = args.steps or (50 if name == "demo" else 2)
    rows = -(-n // model.mesh.shape["data"]) * model.mesh.shape["data"]
    drop = per_evaluation(model, (*GIVEN, TARGET), rows, args.reps)
    full = per_evaluation(model, reg.names, rows, args.reps)
    out = {"config": name, "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(model._params))),
           "eval_drop": drop, "eval_full": full, "speedup_per_eval": full["seconds"] / drop["seconds"],
           "sample_drop": per_sample(model, reg, n, steps, "drop", args.sample_reps),
           "sample_full": per_sample(model, reg, n, steps, "noise", args.sample_reps)}
    print(f"{name}: eval drop {drop['seconds'] * 1e3:.1f} ms ({drop['tokens']} tokens), full "
          f"{full['seconds'] * 1e3:.1f} ms ({full['tokens']} tokens): {out['speedup_per_eval']:.2f}x", flush=True)
    return out


def table(results) -> str:
    lines = ["| config | params | rows | tokens drop / full | ms per eval drop / full | speedup | "
             "s per sample drop / full (steps) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        d, f, sd, sf = r["eval_drop"], r["eval_full"], r["sample_drop"], r["sample_full"]
        lines.append(f"| {r['config']} | {r['params'] / 1e6:.1f} M | {d['rows']} | {d['tokens']} / {f['tokens']} | "
                     f"{d['seconds'] * 1e3:.1f} / {f['seconds'] * 1e3:.1f} | {r['speedup_per_eval']:.2f}x | "
                     f"{sd['seconds_per_sample']:.2f} / {sf['seconds_per_sample']:.2f} ({sd['steps']}) |")
    return "\n".join(lines)


FLAGS = flagparse.new()
flags.DEFINE_string("configs", "demo,base", "comma-separated names of configs/*.py", flag_values=FLAGS)
flags.DEFINE_integer("steps", 0, "network evaluations per sample (default: 50 demo, 2 otherwise)", flag_values=FLAGS)
flags.DEFINE_integer("n-samples", 0, "samples per call (default: 4 demo, 1 otherwise)", flag_values=FLAGS)
flags.DEFINE_integer("reps", 3, "timed forward passes (after a warm-up)", flag_values=FLAGS)
flags.DEFINE_integer("sample-reps", 3, "timed generate() calls (after a warm-up)", flag_values=FLAGS)
flags.DEFINE_string("out", "benchmarks/results/sampling.json", "JSON path", flag_values=FLAGS)


def main(argv=None):
    args = flagparse.parse(FLAGS, argv, prog="benchmarks/sampling.py", description=__doc__.split("\n\n")[0])
    results = [bench(name, args) for name in args.configs.split(",")]
    print(table(results))
    meta = {"devices": [str(d) for d in jax.devices()], "platform": platform.platform(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "jax": jax.__version__}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results, "table": table(results)}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
