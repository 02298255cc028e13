"""Where is the spread lost? The narrowing benchmark (generated S2 L2A given nothing, DEM,
DEM + land cover, + S1) for one run under sampling variants, side by side.

A variant is ``NAME[:key=value,...]`` over ``CopGen.generate``'s options and the weights
loaded: ``ddim``, ``ddim:eta=1``, ``dpm++``, ``dpm++sde``, ``ddim:guidance=2``,
``ddim:weights=raw`` (the optimiser's own parameters instead of their EMA),
``ddim:steps=50``. Per variant and level, on the same held-out observations and noise seeds:

  std       per-pixel std over the samples (the spread)
  mae_mean  MAE of the samples' mean to the truth (the error the spread should match)
  ratio     std / (1.25 mae_mean): about 1 for a calibrated Gaussian ensemble (RMSE = 1.25 MAE)
  cov90     5-95 % interval coverage (0.90 calibrated)
  crps      CRPS (lower is better)

``--scale`` adds, for the first variant, its samples spread about their mean by the factor
that makes cov90 = 0.90 on the run's *training* places (one factor per level, fitted there
only and applied to the held-out ones), reported beside the raw variant.

  python benchmarks/calibration.py --workdir=runs/demo --variants=ddim,ddim:eta=1,dpm++sde,ddim:guidance=2 \\
      --cells=12 --samples=8 --steps=25 --scale
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
from copgen_jax.data.footprints import by_location, read_footprints  # noqa: E402
from copgen_jax.evaluate import benchmarks as suite  # noqa: E402
from copgen_jax.evaluate import metrics  # noqa: E402
from copgen_jax.evaluate.data import Group, eval_units, generate_batched, resolve, stack  # noqa: E402
from copgen_jax.inference.copgen import CopGen  # noqa: E402
from copgen_jax.modalities import IMAGE  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LOAD_OPTIONS = ("weights",)  # variant keys that choose what is loaded, not how it samples

FLAGS = flagparse.new()
flags.DEFINE_string("workdir", "runs/demo", "a trained run", flag_values=FLAGS)
flags.DEFINE_list("variants", ["ddim", "ddim:eta=1", "dpm++", "dpm++sde", "ddim:guidance=2", "ddim:weights=raw"],
                  "sampling variants NAME[:key=value,...] (module doc)", flag_values=FLAGS)
flags.DEFINE_integer("cells", 12, "held-out locations (0 = all)", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("samples", 8, "samples per observation", lower_bound=2, flag_values=FLAGS)
flags.DEFINE_integer("steps", 25, "sampler steps (a variant's steps=... wins)", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_bool("scale", False, "fit a spread scale for the first variant on training places", flag_values=FLAGS)
flags.DEFINE_integer("fit-cells", 24, "training places the scale is fitted on", lower_bound=2, flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=FLAGS)
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/calibration_<run>.json)", flag_values=FLAGS)


def parse_variant(spec: str) -> tuple[str, dict, dict]:
    """``"ddim:eta=1,guidance=2"`` -> (sampler, generate options, load options)."""
    sampler, _, rest = spec.partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant {spec!r}: {item!r} is not key=value")
        opts[key] = value if key in LOAD_OPTIONS else (int(value) if key == "steps" else float(value))
    return sampler, {"sampler": sampler, **{k: v for k, v in opts.items() if k not in LOAD_OPTIONS}}, \
        {k: v for k, v in opts.items() if k in LOAD_OPTIONS}


class Variant:
    """A predictor with ``generate``'s signature whose options are overridden, and whose samples
    may be spread about their mean by ``scale[level]`` (level = the sorted given names)."""

    def __init__(self, model, options: dict, scale: dict | None = None):
        self.model, self.options, self.scale, self.registry = model, options, scale or {}, model.registry

    def generate(self, generate, conditions, **kwargs):
        gen = self.model.generate(generate, conditions, **{**kwargs, **self.options})
        factor = self.scale.get(tuple(sorted(conditions)), 1.0)
        if factor == 1.0:
            return gen
        out = {n: gen[n] for n in generate}
        for n in generate:
            x = np.asarray(out[n], np.float64)
            mean = x.mean(1, keepdims=True)
            out[n] = np.clip(mean + factor * (x - mean), 0, None).astype(np.float32)  # reflectance >= 0
        return out


def fit_scale(model, registry, target, levels, records, samples, steps, seed) -> dict:
    """Per level, the factor on the samples' deviations that gives 5-95 % coverage 0.90 on ``records``."""
    factors = {}
    for label, given in levels:
        gen = generate_batched(model, target, {n: stack(records, n) for n in given}, len(records), samples,
                               chunk=8, seed=seed, steps=steps, sampler=model.options["sampler"])
        truth = {n: np.stack([eval_units(registry[n], r["pixels"][n]) for r in records]) for n in target}
        x = {n: eval_units(registry[n], gen[n]) for n in target}

        def coverage(k):
            cov = []
            for n in target:
                spread = x[n].mean(1, keepdims=True) + k * (x[n] - x[n].mean(1, keepdims=True))
                cov.append(metrics.interval_coverage(truth[n], np.moveaxis(np.clip(spread, 0, None), 1, 0)))
            return float(np.mean(cov))

        lo, hi = 0.5, 8.0
        for _ in range(20):  # coverage grows with k: bisect for 0.90
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if coverage(mid) < 0.90 else (lo, mid)
        factors[tuple(sorted(given))] = (lo * hi) ** 0.5
        print(f"  scale for {label}: {factors[tuple(sorted(given))]:.3f} (fitted on {len(records)} training places)")
    return factors


def row_of(level: dict, name: str) -> dict:
    m = level["models"][name]
    std, mae_mean = m["pixel_std"]["mean"], m["mae_ensemble_mean"]["mean"]
    return {"std": std, "mae_mean": mae_mean, "ratio": std / (1.25 * mae_mean),
            "cov90": m["interval_coverage"]["mean"], "crps": m["crps"]["mean"]}


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog="benchmarks/calibration.py", description=__doc__.split("\n")[0])
    pixels = os.path.join(args.workdir, "data", "pixels")
    loaded: dict = {}
    base = None
    variants = {}
    for spec in args.variants:
        _, options, load = parse_variant(spec)
        key = tuple(sorted(load.items()))
        if key not in loaded:
            loaded[key] = CopGen.load(args.workdir, **load)
        base = base or loaded[key]
        variants[spec] = Variant(loaded[key], {"steps": args.steps, **options})
    registry = base.registry
    groups = by_location(read_footprints(pixels, registry, "test"))
    settings = suite.Settings(cells=args.cells, samples=args.samples, steps=args.steps, seed=args.seed)
    if args.scale:
        first = args.variants[0]
        target, _ = resolve(registry, (Group(suite.S2L2A, IMAGE),))
        levels, _ = suite.narrowing_levels(registry)
        train = [r for r in read_footprints(pixels, registry, "train")
                 if all(n in r["pixels"] for n in (*levels[-1][1], *target))][:args.fit_cells]
        scale = fit_scale(variants[first], registry, target, levels, train, args.samples, args.steps, args.seed)
        variants[f"{first} scaled"] = Variant(variants[first].model, variants[first].options, scale)
    results, start = {}, time.perf_counter()
    for spec, variant in variants.items():
        t0 = time.perf_counter()
        res = suite.narrowing({spec: variant}, registry, groups, settings)
        results[spec] = {"seconds": time.perf_counter() - t0, "examples": res["examples"],
                         "levels": {lv["label"]: row_of(lv, spec) for lv in res["levels"]}}
        if spec.endswith(" scaled"):
            results[spec]["scale"] = {" + ".join(k) or "nothing": v for k, v in scale.items()}
        print(f"{spec}: {results[spec]['seconds']:.0f} s")
    levels = list(next(iter(results.values()))["levels"])
    print(f"\nnarrowing of generated S2 L2A on {settings.cells or 'all'} held-out locations, "
          f"{args.samples} samples, {args.steps} steps; per level: std / ratio / cov90 / crps")
    print(f"{'variant':<24}" + "".join(f"{lv:>30}" for lv in levels))
    for spec, res in results.items():
        cells = [res["levels"][lv] for lv in levels]
        print(f"{spec:<24}" + "".join(f"{c['std']:>8.3f}{c['ratio']:>7.2f}{c['cov90']:>7.2f}{c['crps']:>8.4f}"
                                      for c in cells))
    out = args.out or os.path.join(RESULTS, f"calibration_{os.path.basename(os.path.normpath(args.workdir))}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"workdir": args.workdir, "cells": args.cells, "samples": args.samples, "steps": args.steps,
                   "seed": args.seed, "seconds": time.perf_counter() - start, "variants": results}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
