"""The benchmark runner: every (benchmark, model) result of a run, cached and resumable.

The command line is ``python -m copgen_jax.evaluate`` (``evaluate/__main__.py``),
which documents the benchmarks, models and outputs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

from copgen_jax import storage
from copgen_jax.evaluate.benchmarks import TASKS, Settings
from copgen_jax.evaluate.metrics import PIT_BINS, RELIABILITY_LEVELS

__all__ = ["BENCHMARKS", "MODELS", "TASKS", "RunModels", "Settings", "cached", "evaluate", "json_ready"]

BENCHMARKS = ("stochastic", "tasks", "narrowing")
MODELS = ("diffusion", "baseline")
RESULTS, REPORT = "results.json", "results.md"
# The calibration curves of tasks and narrowing, in their parts' cache key: a part from before
# them (or with other levels) is recomputed rather than reported without them.
CURVES = {"reliability_levels": list(RELIABILITY_LEVELS), "pit_bins": PIT_BINS}


def json_ready(x):
    """JSON-ready: NaN / inf -> None, numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
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


class RunModels:
    """Models loaded on first use (a rerun whose results are all cached loads nothing)."""

    def __init__(self, workdir, train_baseline_steps):
        self.workdir, self.train_steps, self._loaded = workdir, train_baseline_steps, {}

    def run_dir(self, label):
        from copgen_jax.trainers.baseline import baseline_dir
        return self.workdir if label == "diffusion" else baseline_dir(self.workdir)

    def prepare(self, label):
        """Make sure the model exists (train the baseline if asked); -> its checkpoint step."""
        from copgen_jax import checkpoint
        if label == "baseline" and self.train_steps != 0:
            from copgen_jax.trainers.baseline import train_baseline
            train_baseline(self.workdir, self.train_steps)  # returns at once when already trained that far
        elif label == "baseline" and not checkpoint.latest_step(self.run_dir(label)):
            raise FileNotFoundError(f"{self.run_dir(label)}: no baseline run; pass --train-baseline-steps N "
                                    "(or leave it out to train as many steps as the diffusion run)")
        return checkpoint.latest_step(self.run_dir(label))

    def __getitem__(self, label):
        if label not in self._loaded:
            logging.info("loading the %s model from %s", label, self.run_dir(label))
            if label == "diffusion":
                from copgen_jax.inference.copgen import CopGen
                self._loaded[label] = CopGen.load(self.workdir)
            else:
                from copgen_jax.evaluate.baseline import Baseline
                self._loaded[label] = Baseline.load(self.workdir)
        return self._loaded[label]


def cached(path, key, compute):
    if storage.path(path).exists():
        part = storage.read_json(path)
        if part.get("key") == key:
            logging.info("reusing %s", path)
            return part["result"]
    result = json_ready(compute())
    storage.path(path).parent.mkdir(parents=True, exist_ok=True)
    storage.write_text(path, json.dumps({"key": key, "result": result}))
    return result


def evaluate(workdir, benchmarks=BENCHMARKS, models=MODELS, settings=None, out=None, *, split="test",
             train_baseline_steps=None, tasks=None, pixels=None) -> dict:
    """Run ``benchmarks`` for ``models`` on ``workdir``; write JSON, Markdown and plots to ``out``.

    ``tasks``: names of ``benchmarks.TASKS`` to run (default all); ``pixels``: the pixel
    shard set to read (default ``<workdir>/data/pixels``). Returns the results dict.
    """
    from copgen_jax import checkpoint
    from copgen_jax.evaluate import benchmarks as suite  # the parameter ``benchmarks`` names which to run
    from copgen_jax.evaluate import report
    from copgen_jax.data.footprints import by_location, read_footprints
    from copgen_jax.modalities import registry_from_config
    workdir = os.fspath(workdir)
    settings = settings or Settings()
    out = os.fspath(out or storage.path(workdir) / "eval")
    for what, given, known in (("benchmark", benchmarks, BENCHMARKS), ("model", models, MODELS),
                               ("task", tasks or (), tuple(TASKS))):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"unknown {what} {unknown}: choose from {', '.join(known)}")
    registry = registry_from_config(checkpoint.load_config(workdir))
    pixels = os.fspath(pixels or storage.path(workdir) / "data" / "pixels")
    if not (storage.path(pixels) / "manifest.json").exists():
        raise FileNotFoundError(f"{pixels}: no pixel shard set (manifest.json); build one with `python -m "
                                f"copgen_jax.datasets.build --out={pixels} ...` using the run's config")
    groups = by_location(read_footprints(pixels, registry, split))
    if not groups:
        raise ValueError(f"{pixels} has no {split!r} records to evaluate on")
    logging.info("%d %s locations, %d observations", len(groups), split, sum(map(len, groups.values())))
    loaded = RunModels(workdir, train_baseline_steps)
    steps = {label: loaded.prepare(label) for label in models}
    results = {"workdir": workdir, "pixels": pixels, "split": split, "locations": len(groups), "settings": dataclasses.asdict(settings),
               "models": {m: {"run": loaded.run_dir(m), "step": steps[m]} for m in models}, "benchmarks": {}}
    fns = {"stochastic": suite.stochastic, "narrowing": suite.narrowing,
           "tasks": lambda *a: suite.tasks(*a, only=tasks)}
    for bench in benchmarks:
        parts = []
        for label in models:
            key = {"settings": results["settings"], "pixels": os.fspath(storage.absolute(pixels)), "split": split,
                   "step": steps[label], "registry": list(registry.names), "tasks": sorted(tasks) if tasks else None,
                   **({"calibration": CURVES} if bench in ("tasks", "narrowing") else {})}
            parts.append(cached(storage.path(out) / "parts" / f"{bench}.{label}.json", key,
                                 lambda: fns[bench]({label: loaded[label]}, registry, groups, settings)))
        merged = parts[0]
        for p in parts[1:]:
            merged = _merge(merged, p)
        results["benchmarks"][bench] = merged
    storage.path(out).mkdir(parents=True, exist_ok=True)
    storage.write_text(storage.path(out) / REPORT, report.markdown(results))
    results["plots"] = [storage.path(p).name for p in report.write_plots(results, out)]
    storage.write_text(storage.path(out) / RESULTS, json.dumps(json_ready(results), indent=1))
    logging.info("wrote %s, %s and %s to %s", RESULTS, REPORT, ", ".join(results["plots"]) or "no plots", out)
    return results
