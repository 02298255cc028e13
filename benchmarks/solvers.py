"""DPM-Solver++ at few steps against DDIM at 50, on a trained run's report tasks.

Every task of the run's ``pipeline.tasks`` is sampled on the same held-out footprints
with the same seed (``copgen_jax.evaluate.demo_report.run_task``) under each solver setting, and
the report's metrics are tabulated side by side with the wall time of the setting.

    python benchmarks/solvers.py --workdir=runs/demo --out=benchmarks/results/solvers.json

Sample metrics have Monte-Carlo noise (8 samples on 4 footprints by default): settings
agree when their differences are of the size of that noise, which the table shows as
the spread between two DDIM-50 runs with different seeds.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from copgen_jax import checkpoint, flagparse  # noqa: E402
from copgen_jax.evaluate import demo_report
from copgen_jax.data.footprints import by_location, read_footprints  # noqa: E402

# (label, sampler, steps, seed): the reference, a second seed of it, the contender, and DDIM
# at the contender's budget.
SETTINGS = (("ddim50", "ddim", 50, 0), ("ddim50 seed 1", "ddim", 50, 1),
            ("dpm++20", "dpm++", 20, 0), ("ddim20", "ddim", 20, 0))
HEADLINE = ("mae", "crps", "interval_coverage_5_95", "spread", "accuracy", "miou")


def load_run(workdir):
    """(config, CopGen, held-out footprints by location) of a finished pipeline run."""
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # Grain reads absl flags
    from copgen_jax.inference.copgen import CopGen
    cfg = checkpoint.load_config(workdir)
    copgen = CopGen.load(workdir)
    groups = by_location(read_footprints(os.path.join(workdir, "data", "pixels"), copgen.registry, "test"))
    return cfg, copgen, groups


def run_setting(copgen, cfg, groups, **overrides) -> tuple[dict, float]:
    """Every report task sampled with ``cfg.pipeline`` changed by ``overrides``; (results, seconds)."""
    p = cfg.pipeline.copy_and_resolve_references()
    for key, value in overrides.items():
        setattr(p, key, value)
    start = time.perf_counter()
    results = {task: demo_report.run_task(copgen, copgen.registry, task, groups, p, out_dir=None) for task in p.tasks}
    return results, time.perf_counter() - start


def rows(per_setting: dict) -> list[tuple]:
    """(task, modality, metric, value per setting) for every headline metric."""
    first = next(iter(per_setting.values()))
    out = []
    for task, result in first.items():
        for name, metrics in result.get("metrics", {}).items():
            for metric in HEADLINE:
                if metric in metrics:
                    out.append((task, name, metric,
                                [per_setting[label][task]["metrics"][name][metric] for label in per_setting]))
    return out


def print_table(per_setting: dict, seconds: dict) -> list[tuple]:
    """Prints the settings side by side, one row per task, modality and metric; returns the rows."""
    table = rows(per_setting)
    labels = list(per_setting)
    print(f"\n{'task':44s} {'modality':24s} {'metric':24s} " + " ".join(f"{lbl:>14s}" for lbl in labels))
    for task, name, metric, values in table:
        print(f"{task[:44]:44s} {name[:24]:24s} {metric:24s} " + " ".join(f"{v:14.4g}" for v in values))
    print(f"{'wall time (s), all tasks':94s} " + " ".join(f"{seconds[lbl]:14.1f}" for lbl in labels))
    return table


def compare(workdir: str, overrides_by_label: dict, out: str, **described) -> int:
    """Runs every ``{label: pipeline overrides}`` setting, prints the table and writes ``out``.

    ``described`` (what the settings were) goes into the JSON beside the rows and timings.
    """
    cfg, copgen, groups = load_run(workdir)
    per_setting, seconds = {}, {}
    for label, overrides in overrides_by_label.items():
        per_setting[label], seconds[label] = run_setting(copgen, cfg, groups, **overrides)
        print(f"{label}: {seconds[label]:.1f} s", flush=True)
    table = print_table(per_setting, seconds)
    report = {"workdir": os.path.abspath(workdir), "step": checkpoint.latest_step(workdir), **described,
              "seconds": seconds, "host": f"{platform.machine()}, {os.cpu_count()} cores",
              "rows": [dict(task=t, modality=n, metric=m, values=dict(zip(per_setting, v))) for t, n, m, v in table]}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")
    return 0


FLAGS = flagparse.new()
flags.DEFINE_string("workdir", None, "a finished pipeline run (configs/demo.py)", flag_values=FLAGS)
flags.DEFINE_string("out", "benchmarks/results/solvers.json", "JSON path", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir"], flag_values=FLAGS)


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog="benchmarks/solvers.py", description=__doc__.splitlines()[0])
    p = checkpoint.load_config(args.workdir).pipeline
    settings = {label: dict(sampler=sampler, sample_steps=steps, seed=seed) for label, sampler, steps, seed in SETTINGS}
    return compare(args.workdir, settings, args.out,
                   settings=[dict(zip(("label", "sampler", "steps", "seed"), s)) for s in SETTINGS],
                   n_samples=p.n_samples, footprints=p.footprints, guidance=p.guidance)


if __name__ == "__main__":
    raise SystemExit(main())
