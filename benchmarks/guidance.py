"""Classifier-free guidance weights side by side, on a trained run's report tasks.

Every task of the run's ``pipeline.tasks`` is sampled under each weight w of ε_uncond +
w (ε_cond − ε_uncond) (0 samples as if nothing were given, 1 is plain conditional sampling)
with the run's sampler and steps and the same seed, on every held-out place by default
rather than the report's few footprints, and the report's metrics are tabulated side by side.

    python benchmarks/guidance.py --workdir=runs/demo --out=benchmarks/results/guidance_demo.json

Guidance only amplifies what the model has learnt: it helps where the conditional
and unconditional predictions differ for the right reasons, and narrows the spread,
which CRPS and interval coverage penalise when the samples were not too wide.
"""
from __future__ import annotations

from absl import flags

from solvers import compare  # puts the repository on sys.path

from copgen_jax import checkpoint, flagparse  # noqa: E402


FLAGS = flagparse.new()
flags.DEFINE_string("workdir", None, "a finished pipeline run (configs/demo.py)", flag_values=FLAGS)
flags.DEFINE_string("weights", "0,1,1.5,2,3", "comma-separated guidance weights (0: the conditions ignored)",
                    flag_values=FLAGS)
flags.DEFINE_integer("footprints", 0, "held-out places per task (0 = all)", flag_values=FLAGS)
flags.DEFINE_integer("n_samples", 4, "samples per footprint", flag_values=FLAGS)
flags.DEFINE_string("out", "benchmarks/results/guidance.json", "JSON path", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir"], flag_values=FLAGS)


def main(argv=None) -> int:
    args = flagparse.parse(FLAGS, argv, prog="benchmarks/guidance.py", description=__doc__.splitlines()[0])
    weights = [float(w) for w in args.weights.split(",")]
    if any(w < 0 for w in weights):
        raise SystemExit(f"--weights={args.weights}: guidance weights are >= 0 (1 = no guidance)")
    # asked for more places than there are, the report's footprint picker takes every one
    footprints = args.footprints if args.footprints > 0 else 1 << 30
    p = checkpoint.load_config(args.workdir).pipeline
    settings = {f"w={w:g}": dict(guidance=w, footprints=footprints, n_samples=args.n_samples) for w in weights}
    return compare(args.workdir, settings, args.out, weights=weights, sampler=p.sampler, steps=p.sample_steps,
                   footprints=args.footprints or "all held-out places", n_samples=args.n_samples)


if __name__ == "__main__":
    raise SystemExit(main())
