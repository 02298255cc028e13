"""Gap filling: does knowing the clear pixels of an S2 L2A scene help generate its cloudy part?

On held-out footprints the gap is a real cloud mask: the record's own (the run's cloud-mask
modality resampled to the target's grid, every class but "Clear"), or, for a run on the synthetic
world without that modality (the demo), the world's cloud mask of another date of the same
place (15-60 % of its sky cloudy); a seeded synthetic blob mask only where neither gives a gap of
5-80 % of the footprint. The gap is then filled
two ways from the same conditions (every modality of the run that is not an S2 product: DEM,
land cover, S1, location, date; other S2 bands would leak the gap's content):

  fill      the clear pixels given as ``known`` (region conditioning), RePaint jumps 0 and 1;
  generate  the whole footprint generated, the clear pixels not given;
  baseline  the deterministic baseline (WORKDIR/baseline, trained by ``python -m copgen_jax.evaluate
            --model=baseline``) predicting the whole footprint from the same conditions: one answer
            repeated, so its CRPS is its MAE and its intervals have no width.

Scored inside the gap against the record's pixels in evaluation units (reflectance = DN / 1e4):
MAE of the sample mean, CRPS and 5-95 % interval coverage of the samples, and the MAE in a
ring one latent pixel (``m.downsample`` px) wide on the gap's side of its edge: the continuity
of the fill with the known part. The ring just outside the edge holds known pixels, which
``fill`` pastes back exactly (MAE 0 by construction), so its inside twin is the one measured.

  python benchmarks/gap_filling.py --workdir=runs/demo --cells 2 --samples 4 --steps 10
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from copgen_jax import flagparse  # noqa: E402
from copgen_jax import checkpoint  # noqa: E402
from copgen_jax.data.footprints import read_footprints  # noqa: E402
from copgen_jax.datasets.synthetic.world import cloudy_sky  # noqa: E402
from copgen_jax.diffusion.choices import SAMPLERS  # noqa: E402
from copgen_jax.evaluate.baseline import Baseline  # noqa: E402
from copgen_jax.evaluate.data import eval_units  # noqa: E402
from copgen_jax.evaluate.metrics import crps, interval_coverage, mae  # noqa: E402
from copgen_jax.inference.copgen import CopGen  # noqa: E402
from copgen_jax.modalities import CLOUD_CLASSES, IMAGE  # noqa: E402
from copgen_jax.trainers.baseline import baseline_dir  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
S2_PRODUCTS = ("Core-S2L1C", "Core-S2L2A")
GAP_SHARE = (0.05, 0.8)  # a record's cloud mask is used as the gap when its cloudy share is in here

FLAGS = flagparse.new()
flags.DEFINE_string("workdir", "runs/demo", "a run with held-out pixel shards", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "backbone checkpoint (default: the newest)", flag_values=FLAGS)
flags.DEFINE_string("pixels", None, "pixel shard set (default WORKDIR/data/pixels)", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "held-out split", flag_values=FLAGS)
flags.DEFINE_string("target", None, "modality to fill (default: the run's finest S2 L2A group)", flag_values=FLAGS)
flags.DEFINE_integer("cells", 2, "held-out footprints", flag_values=FLAGS)
flags.DEFINE_integer("samples", 4, "samples per footprint", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "sampler steps", flag_values=FLAGS)
flags.DEFINE_enum("sampler", "ddim", SAMPLERS, "sampler", flag_values=FLAGS)
flags.DEFINE_string("resample", "0,1", "RePaint jumps per step to compare (comma-separated)", flag_values=FLAGS)
flags.DEFINE_bool("baseline", True, "add the deterministic baseline's row when WORKDIR/baseline exists",
                  flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "sampling and blob seed", flag_values=FLAGS)
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/gap_filling_<run>.json)", flag_values=FLAGS)


def pick_target(registry, name=None):
    if name:
        return registry[name]
    found = sorted((m for m in registry if m.product == "Core-S2L2A" and m.kind == IMAGE), key=lambda m: m.gsd)
    if not found:
        raise ValueError(f"the run has no S2 L2A modality to fill: pass --target, one of {registry.names}")
    return found[0]


def records(pixels, registry, split, names, count):
    out = []
    for rec in read_footprints(pixels, registry, split):
        if all(n in rec["pixels"] for n in names):
            out.append(rec)
        if len(out) == count:
            return out
    if not out:
        raise ValueError(f"no {split} record in {pixels} has all of {', '.join(names)}")
    return out


def blob_mask(size, rng) -> np.ndarray:
    """True in a union of three random discs covering roughly a quarter of the footprint."""
    yy, xx = np.mgrid[:size, :size]
    gap = np.zeros((size, size), bool)
    while not GAP_SHARE[0] < gap.mean() < 0.5:
        gap[:] = False
        for _ in range(3):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            gap |= (yy - cy) ** 2 + (xx - cx) ** 2 < (rng.uniform(0.12, 0.22) * size) ** 2
    return gap


def world_sky(rec, world, target):
    """The clear-sky mask of another date of the record's own place, when the run's data is the
    synthetic world ``world`` = (seed, footprints per side); None when it has no such date."""
    if world is None:
        return None
    seed, side = world
    try:
        clear, _ = cloudy_sky(seed, rec["cell_id"], side, skip=(int(rec["observation"]),))
    except ValueError:
        return None
    px = clear.shape[0] // side
    clear = clear[rec["row"] * px:(rec["row"] + 1) * px, rec["col"] * px:(rec["col"] + 1) * px]
    near = np.arange(target.size) * px // target.size  # nearest 10 m pixel
    return ~clear[np.ix_(near, near)]


def gap_for(rec, cloud, world, target, rng):
    """(gap mask on the target's grid, where it came from): the record's own cloud mask, else the
    world's sky of another date of the place, else a seeded blob mask."""
    if cloud is not None and cloud.name in rec["pixels"]:
        near = np.arange(target.size) * cloud.size // target.size  # nearest cloud-mask pixel
        cloudy = rec["pixels"][cloud.name][0][np.ix_(near, near)] != CLOUD_CLASSES.codes[0]
        if GAP_SHARE[0] < cloudy.mean() < GAP_SHARE[1]:
            return cloudy, "cloud mask"
    cloudy = world_sky(rec, world, target)
    if cloudy is not None and GAP_SHARE[0] < cloudy.mean() < GAP_SHARE[1]:
        return cloudy, "world sky"
    return blob_mask(target.size, rng), "blob"


def edge_ring(gap, width) -> np.ndarray:
    """Gap pixels within ``width`` px (Chebyshev) of a known pixel."""
    known = np.pad(~gap, width)
    near = np.zeros_like(gap)
    h, w = gap.shape
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            near |= known[dy:dy + h, dx:dx + w]
    return gap & near


def scores(target, samples, truth, gap):
    """Metrics inside the gap and in its edge ring; samples (B, N, C, H, W) physical units."""
    x = eval_units(target, samples)
    y = eval_units(target, truth)
    ensemble = np.moveaxis(x, 1, 0)
    inside = np.broadcast_to(gap[:, None], y.shape)
    ring = np.broadcast_to(np.stack([edge_ring(g, target.downsample) for g in gap])[:, None], y.shape)
    mean = x.mean(1)
    return {"mae": float(mae(mean, y, inside, per_band=False)), "crps": crps(y, ensemble, inside),
            "coverage_5_95": interval_coverage(y, ensemble, 5, 95, inside),
            "mae_edge": float(mae(mean, y, ring, per_band=False))}


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog="benchmarks/gap_filling.py", description=__doc__.split("\n")[0])
    step = args.step or max(int(p) for p in os.listdir(os.path.join(args.workdir, "checkpoints")) if p.isdigit())
    cg = CopGen.load(args.workdir, step)
    reg = cg.registry
    target = pick_target(reg, args.target)
    cloud = next((m for m in reg if m.codec == CLOUD_CLASSES), None)
    given = [m.name for m in reg if m.name != target.name and m.product not in S2_PRODUCTS
             and (cloud is None or m.name != cloud.name)]
    recs = records(args.pixels or os.path.join(args.workdir, "data", "pixels"), reg, args.split,
                   [target.name, *given], args.cells)
    rng = np.random.default_rng(args.seed)
    cfg = checkpoint.load_config(args.workdir)
    world = (cfg.pipeline.world_seed, cfg.pipeline.footprints_per_side) if cfg.task == "pipeline" else None
    gaps, sources = zip(*(gap_for(r, cloud, world, target, rng) for r in recs))
    gap = np.stack(gaps)
    truth = np.stack([r["pixels"][target.name] for r in recs])
    conditions = {n: np.stack([r["pixels"][n] for r in recs]) for n in given}
    opts = dict(n_samples=args.samples, steps=args.steps, sampler=args.sampler, seed=args.seed)

    runs = [("generate", 0, cg, {})] + [("fill", int(r), cg, {"known": {target.name: (truth, ~gap)},
                                                                "resample": int(r)})
                                        for r in args.resample.split(",")]
    if args.baseline and os.path.exists(os.path.join(baseline_dir(args.workdir), "config.json")):
        runs.append(("baseline", 0, Baseline.load(args.workdir), {}))
    elif args.baseline:
        print(f"no baseline in {baseline_dir(args.workdir)}: train it with `python -m copgen_jax.evaluate "
              f"--workdir={args.workdir} --model=baseline` for its row")
    rows = []
    for method, resample, model, extra in runs:
        start = time.perf_counter()
        gen = model.generate([target.name], conditions, **opts, **extra)
        rows.append({"method": method, "resample": resample, "seconds": time.perf_counter() - start,
                     **scores(target, gen[target.name], truth, gap)})

    print(f"gap filling of {target.name}, step {step}, on {len(recs)} {args.split} footprints "
          f"(gaps: {', '.join(sources)}; {gap.mean():.0%} of pixels), given {', '.join(given) or 'nothing'}; "
          f"{args.samples} samples, {args.sampler} {args.steps} steps")
    print(f"{'method':<10}{'resample':>9}{'MAE':>9}{'CRPS':>9}{'cov5-95':>9}{'MAE edge':>10}{'s':>8}")
    for r in rows:
        print(f"{r['method']:<10}{r['resample']:>9}{r['mae']:>9.4f}{r['crps']:>9.4f}{r['coverage_5_95']:>9.3f}"
              f"{r['mae_edge']:>10.4f}{r['seconds']:>8.1f}")
    out = args.out or os.path.join(RESULTS, f"gap_filling_{os.path.basename(os.path.normpath(args.workdir))}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"workdir": args.workdir, "step": step, "target": target.name, "given": given, "split": args.split,
                   "footprints": len(recs), "gap_sources": list(sources), "gap_share": float(gap.mean()),
                   "samples": args.samples, "steps": args.steps, "sampler": args.sampler, "seed": args.seed,
                   "units": "evaluation units (reflectance = DN / 1e4)", "rows": rows}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
