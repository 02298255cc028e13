"""Evaluation: the metrics (``copgen_jax.metrics``) and the benchmark runner.

    python -m copgen_jax.evaluate --workdir DIR --benchmark stochastic,tasks,narrowing \\
        [--model both] [--cells N] [--samples K] [--steps S] [--sampler ddim|dpm++] [--out DIR/eval]

Benchmarks (``copgen_jax.evaluate_bench``), on the held-out (``--split test``) footprints of
``DIR/data/pixels``, in evaluation units (S2 reflectance, S1 dB, DEM metres):
  stochastic  per footprint location, its K real observations (the dates of one footprint:
              same DEM and land cover) against K samples generated from DEM + land cover
              -> S2 L2A; precision / recall (k-NN), 1-NN accuracy, MMD, mean Wasserstein,
              range coverage and intra-set distances, on the per-image band-mean spectra and
              on the structure embedding; mean ± std over locations.
  tasks       S1 -> S2L2A, S2L2A -> S1, 10 m -> 20/60 m band infilling (S2 L2A and L1C),
              S2L2A -> land cover and -> DEM, on every held-out observation: MAE / RMSE /
              PSNR / SSIM per sample, best of N and of the ensemble mean; accuracy / mIoU for
              class maps; interval coverage and CRPS.
  narrowing   mean per-pixel std of generated S2 L2A, interval coverage and CRPS as the
              conditioning grows: nothing -> DEM -> + land cover -> + S1 -> + S2 L1C.
The registry decides what is possible: a benchmark, task or level whose modalities the run
lacks is skipped with a message.

Models (``--model``): ``diffusion`` (the run), ``baseline`` (``copgen_jax.baseline``, the same
backbone trained as a deterministic MSE regressor in ``DIR/baseline``, trained first when
missing or short of ``--train-baseline-steps``; default: as many steps as the diffusion run,
0 = never train) or ``both``, reported side by side.

Output in ``--out`` (default ``DIR/eval``): ``results.json``, ``results.md``, ``stochastic.png``,
``tasks.png``, ``narrowing.png``, and ``parts/`` — each finished (benchmark, model) result with
the settings it was computed with, reused by a rerun with the same settings, so an interrupted
evaluation resumes and adding a model computes only that model.

``results.json`` (non-finite numbers are null; a statistic ``S`` is {"mean", "std", "n"} over
locations or observations, ``M`` a model label)::

    {workdir, pixels, split, locations, settings: {cells, samples, steps, sampler, seed, chunk, k},
     models: {M: {run, step}}, plots: [file names],
     benchmarks: {
       stochastic: {given, generated, locations, real_per_location: [K per location],
                    models: {M: {"spectra/<metric>": S, "structure/<metric>": S,
                                 "pixel_std/real": S, "pixel_std/generated": S, "k": S}},
                    per_location: {M: [{location, k, <the same keys>: value}]},
                    example: {location, bands, real: [[band means]], M: [[band means]]}}
                   metric: precision recall nn_accuracy mmd wasserstein range_coverage
                           intra_real intra_generated
       tasks: {name: {given, generated, description, examples,
                      models: {M: {"<modality>/<metric>": S}}}}
              images: mae rmse psnr ssim (each also _best_of_n, _ensemble_mean),
                      crps interval_coverage spread
              class maps: accuracy miou (each also _best_of_n, _mode), disagreement
       narrowing: {generated, examples, skipped: [messages],
                   levels: [{label, given, models: {M: {pixel_std, interval_coverage, crps,
                                                        mae_ensemble_mean: S}}}]}}}

A benchmark or task the run cannot do is ``{"skipped": "<why>"}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys

from copgen_jax.metrics import *  # noqa: F401,F403  (the metrics are part of this module's API)
from copgen_jax.metrics import __all__ as _metric_names
from copgen_jax.evaluate_bench import TASKS, Settings

__all__ = list(_metric_names) + ["BENCHMARKS", "MODELS", "TASKS", "Settings", "evaluate", "main"]

BENCHMARKS = ("stochastic", "tasks", "narrowing")
MODELS = ("diffusion", "baseline")
RESULTS, REPORT = "results.json", "results.md"


def _clean(x):
    """JSON-ready: NaN / inf -> None, numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _merge(a, b):
    """Results of one benchmark for different models -> one result (dicts merged recursively)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {**b, **{k: _merge(v, b[k]) if k in b else v for k, v in a.items()}}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(v, dict) for v in a):
        return [_merge(x, y) for x, y in zip(a, b)]
    return a


class _Models:
    """Models loaded on first use (a rerun whose results are all cached loads nothing)."""

    def __init__(self, workdir, train_baseline_steps):
        self.workdir, self.train_steps, self._loaded = workdir, train_baseline_steps, {}

    def run_dir(self, label):
        from copgen_jax.baseline import baseline_dir
        return self.workdir if label == "diffusion" else baseline_dir(self.workdir)

    def prepare(self, label):
        """Make sure the model exists (train the baseline if asked); -> its checkpoint step."""
        from copgen_jax import checkpoint
        if label == "baseline" and self.train_steps != 0:
            from copgen_jax.baseline import train_baseline
            train_baseline(self.workdir, self.train_steps)  # returns at once when already trained that far
        elif label == "baseline" and not checkpoint.latest_step(self.run_dir(label)):
            raise FileNotFoundError(f"{self.run_dir(label)}: no baseline run; pass --train-baseline-steps N "
                                    "(or leave it out to train as many steps as the diffusion run)")
        return checkpoint.latest_step(self.run_dir(label))

    def __getitem__(self, label):
        if label not in self._loaded:
            logging.info("loading the %s model from %s", label, self.run_dir(label))
            if label == "diffusion":
                from copgen_jax.generate import CopGen
                self._loaded[label] = CopGen.load(self.workdir)
            else:
                from copgen_jax.baseline import Baseline
                self._loaded[label] = Baseline.load(self.workdir)
        return self._loaded[label]


def _cached(path, key, compute):
    if os.path.exists(path):
        with open(path) as f:
            part = json.load(f)
        if part.get("key") == key:
            logging.info("reusing %s", path)
            return part["result"]
    result = _clean(compute())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"key": key, "result": result}, f)
    os.replace(path + ".tmp", path)
    return result


def evaluate(workdir, benchmarks=BENCHMARKS, models=MODELS, settings=None, out=None, *, split="test",
             train_baseline_steps=None, tasks=None, pixels=None) -> dict:
    """Run ``benchmarks`` for ``models`` on ``workdir``; write JSON, Markdown and plots to ``out``.

    ``tasks``: names of ``evaluate_bench.TASKS`` to run (default all); ``pixels``: the pixel
    shard set to read (default ``<workdir>/data/pixels``). Returns the results dict.
    """
    from copgen_jax import checkpoint, evaluate_bench, evaluate_report
    from copgen_jax.footprint_records import by_location, read_footprints
    from copgen_jax.modalities import registry_from_config
    workdir = os.fspath(workdir)
    settings = settings or Settings()
    out = out or os.path.join(workdir, "eval")
    for what, given, known in (("benchmark", benchmarks, BENCHMARKS), ("model", models, MODELS),
                               ("task", tasks or (), tuple(TASKS))):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"unknown {what} {unknown}: choose from {', '.join(known)}")
    registry = registry_from_config(checkpoint.load_config(workdir))
    pixels = os.fspath(pixels or os.path.join(workdir, "data", "pixels"))
    if not os.path.exists(os.path.join(pixels, "manifest.json")):
        raise FileNotFoundError(f"{pixels}: no pixel shard set (manifest.json); build one with `python -m "
                                f"datasets.build --out={pixels} ...` using the run's config")
    groups = by_location(read_footprints(pixels, registry, split))
    if not groups:
        raise ValueError(f"{pixels} has no {split!r} records to evaluate on")
    logging.info("%d %s locations, %d observations", len(groups), split, sum(map(len, groups.values())))
    loaded = _Models(workdir, train_baseline_steps)
    steps = {label: loaded.prepare(label) for label in models}
    results = {"workdir": workdir, "pixels": pixels, "split": split, "locations": len(groups), "settings": dataclasses.asdict(settings),
               "models": {m: {"run": loaded.run_dir(m), "step": steps[m]} for m in models}, "benchmarks": {}}
    fns = {"stochastic": evaluate_bench.stochastic, "narrowing": evaluate_bench.narrowing,
           "tasks": lambda *a: evaluate_bench.tasks(*a, only=tasks)}
    for bench in benchmarks:
        parts = []
        for label in models:
            key = {"settings": results["settings"], "pixels": os.path.abspath(pixels), "split": split,
                   "step": steps[label], "registry": list(registry.names), "tasks": sorted(tasks) if tasks else None}
            parts.append(_cached(os.path.join(out, "parts", f"{bench}.{label}.json"), key,
                                 lambda: fns[bench]({label: loaded[label]}, registry, groups, settings)))
        merged = parts[0]
        for p in parts[1:]:
            merged = _merge(merged, p)
        results["benchmarks"][bench] = merged
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, REPORT), "w") as f:
        f.write(evaluate_report.markdown(results))
    results["plots"] = [os.path.basename(p) for p in evaluate_report.write_plots(results, out)]
    with open(os.path.join(out, RESULTS), "w") as f:
        json.dump(_clean(results), f, indent=1)
    logging.info("wrote %s, %s and %s to %s", RESULTS, REPORT, ", ".join(results["plots"]) or "no plots", out)
    return results


def _csv(choices):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if items == ["all"]:
            return choices
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)} (comma-separated) or all")
        return tuple(items)
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m copgen_jax.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="run directory (config.json, checkpoints/, tokenizers/, data/)")
    p.add_argument("--benchmark", type=_csv(BENCHMARKS), default=BENCHMARKS,
                   help="stochastic, tasks, narrowing (comma-separated) or all (default)")
    p.add_argument("--model", default="both", choices=("diffusion", "baseline", "both"))
    p.add_argument("--cells", type=int, default=0, help="footprint locations to evaluate (0: all held-out ones)")
    p.add_argument("--samples", type=int, default=16, help="samples per input (K)")
    p.add_argument("--steps", type=int, default=50, help="sampler network evaluations")
    p.add_argument("--sampler", default="ddim", choices=("ddim", "dpm++"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=8, help="inputs per generate call")
    p.add_argument("--split", default="test")
    p.add_argument("--pixels", default=None, help="pixel shard set to evaluate on (default DIR/data/pixels)")
    p.add_argument("--tasks", type=lambda t: tuple(x for x in t.split(",") if x), default=None,
                   help="only these tasks (names as in the report), comma-separated")
    p.add_argument("--train-baseline-steps", type=int, default=None,
                   help="train DIR/baseline up to this many steps when it has fewer (default: as many as the "
                        "diffusion run; 0: never train)")
    p.add_argument("--out", default=None, help="output directory (default DIR/eval)")
    args = p.parse_args(argv)
    for name in ("cells", "chunk", "samples", "steps"):
        if getattr(args, name) < (0 if name == "cells" else 1):
            p.error(f"--{name} must be {'>= 0' if name == 'cells' else '>= 1'}, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # Grain (the baseline's training data) reads absl flags
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every read and write at INFO
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings(cells=args.cells, samples=args.samples, steps=args.steps, sampler=args.sampler,
                        seed=args.seed, chunk=args.chunk)
    models = MODELS if args.model == "both" else (args.model,)
    results = evaluate(args.workdir, args.benchmark, models, settings, args.out, split=args.split,
                       train_baseline_steps=args.train_baseline_steps, tasks=args.tasks, pixels=args.pixels)
    print(os.path.join(args.out or os.path.join(args.workdir, "eval"), REPORT))
    return results


if __name__ == "__main__":
    main()
