"""Does a run use its conditions? x0 R² of the generated modalities with and without them.

For held-out footprints the generated modalities' latents are noised to timestep n and the
backbone predicts x0 twice: with the given modalities in the sequence, clean at timestep 0, and
with them dropped. R² = 1 - MSE / variance of the true latents. A model that has learnt the
conditional structure gains at high n, where the noisy latent alone says little; no gain means
it ignores the conditions, whatever its samples look like. Dropping is how runs trained with
``diffusion.modality_dropout`` see absent modalities.

  python benchmarks/conditioning.py --workdir=runs/demo \\
      --task="3d_cartesian_lat_lon+DEM_DEM->LULC_LULC" --out=runs/demo/eval/conditioning.json
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from copgen_jax import flagparse  # noqa: E402
from copgen_jax.evaluate.demo_report import parse_task  # noqa: E402
from copgen_jax.data.footprints import read_footprints  # noqa: E402
from copgen_jax.inference.copgen import CopGen  # noqa: E402


def held_out(cg: CopGen, pixels: str, names, count: int, split: str) -> dict:
    """Physical arrays (B, ...) of the first ``count`` records of ``split`` that have every name
    (``count`` 0: all of them)."""
    records = []
    for rec in read_footprints(pixels, cg.registry, split):
        if all(n in rec["pixels"] for n in names):
            records.append(rec)
        if len(records) == count:
            break
    if not records:
        raise ValueError(f"no {split} record in {pixels} has all of {', '.join(names)}")
    return {n: np.stack([r["pixels"][n] for r in records]) for n in names}


def x0_r2(cg: CopGen, latents: dict, generated, given, n: int, seed: int) -> dict:
    """R² of the x0 prediction per generated modality at timestep ``n``, given ``given``."""
    network, schedule = cg.network(), cg.schedule
    batch = len(latents[generated[0]])
    t = jnp.full((batch,), n, jnp.int32)
    keys = jax.random.split(jax.random.key(seed + n), len(generated))
    noisy = {g: schedule.q_sample(jnp.asarray(latents[g]), t, jax.random.normal(k, latents[g].shape))
             for g, k in zip(generated, keys)}
    inputs = {**noisy, **{c: jnp.asarray(latents[c]) for c in given}}
    timesteps = {**{g: t for g in generated}, **{c: jnp.zeros_like(t) for c in given}}
    out = network(inputs, timesteps)
    scores = {}
    for g in generated:
        a, s = (c.reshape(-1, *(1,) * (noisy[g].ndim - 1)) for c in schedule.coefficients(t))
        x0 = (noisy[g] - s * schedule.eps(out[g], noisy[g], t)) / a
        truth = np.asarray(latents[g])
        scores[g] = float(1 - np.mean((np.asarray(x0) - truth) ** 2) / np.var(truth, axis=0).mean())
    return scores


FLAGS = flagparse.new()
flags.DEFINE_string("workdir", None, "a finished pipeline run", flag_values=FLAGS)
flags.DEFINE_string("task", None, "'given+given->generated', e.g. 'DEM_DEM->LULC_LULC'", flag_values=FLAGS)
flags.DEFINE_string("pixels", None, "pixel shard set (default WORKDIR/data/pixels)", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "held-out split", flag_values=FLAGS)
# Records come cell by cell: a prefix covers few held-out cells, and R² over few cells
# measures little (the demo's first 96 of 208 test records, 6 of 13 cells, hid a gain of 0.06).
flags.DEFINE_integer("records", 0, "first N held-out records (default 0: all)", flag_values=FLAGS)
flags.DEFINE_string("timesteps", "200,500,800,1000", "comma-separated timesteps", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "encoding and noise seed", flag_values=FLAGS)
flags.DEFINE_string("out", None, "JSON path (default WORKDIR/eval/conditioning.json)", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir", "task"], flag_values=FLAGS)


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog="benchmarks/conditioning.py", description=__doc__.split("\n")[0])
    given, generated = parse_task(args.task)
    cg = CopGen.load(args.workdir)
    physical = held_out(cg, args.pixels or os.path.join(args.workdir, "data", "pixels"), given + generated,
                        args.records, args.split)
    latents = cg.encode(physical, seed=args.seed)
    rows = []
    for n in (int(x) for x in args.timesteps.split(",")):
        alone, conditioned = x0_r2(cg, latents, generated, [], n, args.seed), \
            x0_r2(cg, latents, generated, given, n, args.seed)
        rows += [{"timestep": n, "modality": g, "r2_alone": alone[g], "r2_given": conditioned[g],
                  "gain": conditioned[g] - alone[g]} for g in generated]
    print(f"{args.task}: x0 R² on {len(latents[generated[0]])} {args.split} footprints")
    print(f"{'timestep':>8}  {'modality':<28}{'alone':>8}{'given':>8}{'gain':>8}")
    for r in rows:
        print(f"{r['timestep']:>8}  {r['modality']:<28}{r['r2_alone']:>8.3f}{r['r2_given']:>8.3f}{r['gain']:>8.3f}")
    out = args.out or os.path.join(args.workdir, "eval", "conditioning.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"workdir": args.workdir, "task": args.task, "split": args.split,
                   "records": len(latents[generated[0]]),
                   "rows": rows}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
