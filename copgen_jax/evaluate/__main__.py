"""Evaluation of a run: the benchmarks, the baseline beside it, a report.

    python -m copgen_jax.evaluate --workdir DIR --benchmark stochastic,tasks,narrowing \\
        [--model both] [--cells N] [--samples K] [--steps S] [--sampler ddim|dpm++|dpm++sde] [--out DIR/eval]

Benchmarks (``copgen_jax.evaluate.benchmarks``), on the held-out (``--split test``) footprints of
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
Calibration (tasks' images and narrowing levels): the coverage of the central sample interval of
each nominal mass 0.1 .. 0.9 (``metrics.reliability``) and the PIT histogram, the truth's
randomised rank among the samples in 10 bins (``metrics.pit_histogram``).
The registry decides what is possible: a benchmark, task or level whose modalities the run
lacks is skipped with a message.

Models (``--model``): ``diffusion`` (the run), ``baseline`` (``copgen_jax.evaluate.baseline``, the same
backbone trained as a deterministic MSE regressor in ``DIR/baseline``, trained first when
missing or short of ``--train-baseline-steps``; default: as many steps as the diffusion run,
0 = never train) or ``both``, reported side by side.

Output in ``--out`` (default ``DIR/eval``): ``results.json``, ``results.md``, ``stochastic.png``,
``tasks.png``, ``narrowing.png``, ``reliability.png`` (reliability diagram: nominal against
empirical coverage, a panel per task image and narrowing level), ``pit.png`` (their PIT
histograms), and ``parts/`` — each finished (benchmark, model) result with
the settings it was computed with, reused by a rerun with the same settings, so an interrupted
evaluation resumes and adding a model computes only that model.

``results.json`` (non-finite numbers are null; a statistic ``S`` is {"mean", "std", "n"} over
locations or observations, ``M`` a model label; a curve ``C`` is the same with lists, element-wise)::

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
       tasks: {name: {given, generated, description, examples, reliability_levels: [0.1 .. 0.9],
                      models: {M: {"<modality>/<metric>": S, "<modality>/reliability": C,
                                   "<modality>/pit": C}}}}
              images: mae rmse psnr ssim (each also _best_of_n, _ensemble_mean),
                      crps interval_coverage spread; reliability (coverage per level), pit
                      (share of pixels per PIT bin)
              class maps: accuracy miou (each also _best_of_n, _mode), disagreement
       narrowing: {generated, examples, skipped: [messages], reliability_levels: [0.1 .. 0.9],
                   levels: [{label, given, models: {M: {pixel_std, interval_coverage, crps,
                                                        mae_ensemble_mean: S, reliability, pit: C}}}]}}}

A benchmark or task the run cannot do is ``{"skipped": "<why>"}``.

The paper's benchmark (``--benchmark copgen``, not part of ``all``): Table 1 of the paper on its
published data, downloaded from the Hugging Face Hub (``copgen_jax.evaluate.copgen_benchmark``
documents the data, window, seeds and metrics; its results go to ``--out``, default
``DIR/eval/copgen``)::

    python -m copgen_jax.evaluate --benchmark copgen --model runs/copgen_base [--cells N]
"""
from __future__ import annotations

import logging
import os

from absl import flags

from copgen_jax import flagparse, hub, storage
from copgen_jax.diffusion.choices import SAMPLERS
from copgen_jax.evaluate.benchmarks import Settings
from copgen_jax.evaluate.run import BENCHMARKS, MODELS, REPORT, evaluate

PAPER_BENCHMARK = "copgen"


FLAGS = flagparse.new()
flags.DEFINE_string("workdir", None, "run directory (config.json, checkpoints/, tokenizers/, data/); "
                    "default: --model when that is a run directory", flag_values=FLAGS)
flags.DEFINE_list("benchmark", ["all"], "stochastic, tasks, narrowing (comma-separated) or all; copgen: the "
                  "paper's Table 1 on its published data (downloaded from the Hub)", flag_values=FLAGS)
flags.DEFINE_string("model", "both", "diffusion, baseline or both (of --workdir), or a run directory (its "
                    "diffusion model)", flag_values=FLAGS)
flags.DEFINE_integer("cells", 0, "footprint locations to evaluate (0: all held-out ones)", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer("samples", 16, "samples per input (K)", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("steps", 50, "sampler network evaluations", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum("sampler", "ddim", SAMPLERS, "sampler", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=FLAGS)
flags.DEFINE_integer("chunk", 8, "inputs per generate call", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("split", "test", "split of the pixel shards", flag_values=FLAGS)
flags.DEFINE_string("pixels", None, "pixel shard set to evaluate on (default DIR/data/pixels)", flag_values=FLAGS)
flags.DEFINE_list("tasks", None, "only these tasks (names as in the report), comma-separated", flag_values=FLAGS)
flags.DEFINE_integer("train-baseline-steps", None, "train DIR/baseline up to this many steps when it has fewer "
                     "(default: as many as the diffusion run; 0: never train)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output directory (default DIR/eval; DIR/eval/copgen for --benchmark copgen)",
                    flag_values=FLAGS)
flags.DEFINE_string("benchmark-revision", "main", f"revision of {hub.BENCHMARK_REPO} (copgen benchmark)",
                    flag_values=FLAGS)
flags.DEFINE_string("conditions-revision", "main", f"revision of {hub.CONDITIONS_REPO}, the cells' DEM and "
                    "land cover (copgen benchmark)", flag_values=FLAGS)
flags.DEFINE_string("conditions-root", None, "a local Major TOM folder with the benchmark cells' Core-DEM and "
                    f"Core-LULC, instead of downloading {hub.CONDITIONS_REPO}", flag_values=FLAGS)
flags.DEFINE_string("hub-cache", None, "Hugging Face cache directory (default: HF_HOME's)", flag_values=FLAGS)
PROG = "python -m copgen_jax.evaluate"


def parse_args(argv):
    args = flagparse.parse(FLAGS, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    items = [t.strip() for t in args.benchmark if t.strip()]
    if items == ["all"]:
        items = list(BENCHMARKS)
    known = BENCHMARKS + (PAPER_BENCHMARK,)
    if not items or any(t not in known for t in items):
        flagparse.fail(FLAGS, PROG, f"--benchmark={','.join(args.benchmark)}: choose from {', '.join(known)} "
                       "(comma-separated) or all")
    args.benchmark = tuple(items)
    if args.model in MODELS + ("both",):
        args.models = MODELS if args.model == "both" else (args.model,)
    elif storage.path(args.model).is_dir():
        args.workdir, args.models = args.workdir or args.model, ("diffusion",)
        if os.path.normpath(args.workdir) != os.path.normpath(args.model):
            flagparse.fail(FLAGS, PROG, f"--model={args.model} is a run directory and --workdir={args.workdir} "
                           "another: give one of them")
    else:
        flagparse.fail(FLAGS, PROG, f"--model={args.model}: choose diffusion, baseline or both, or give a run "
                       "directory (no such directory)")
    if not args.workdir:
        flagparse.fail(FLAGS, PROG, "--workdir (or --model as a run directory) is required")
    args.tasks = tuple(t for t in args.tasks if t) if args.tasks is not None else None
    return args


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every read and write at INFO
    args = parse_args(argv)
    settings = Settings(cells=args.cells, samples=args.samples, steps=args.steps, sampler=args.sampler,
                        seed=args.seed, chunk=args.chunk)
    results = {}
    suite = tuple(b for b in args.benchmark if b != PAPER_BENCHMARK)
    if suite:
        results = evaluate(args.workdir, suite, args.models, settings, args.out, split=args.split,
                           train_baseline_steps=args.train_baseline_steps, tasks=args.tasks, pixels=args.pixels)
        print(os.path.join(args.out or os.path.join(args.workdir, "eval"), REPORT))
    if PAPER_BENCHMARK in args.benchmark:
        results[PAPER_BENCHMARK] = paper_benchmark(args, settings)
    return results


def paper_benchmark(args, settings) -> dict:
    """``--benchmark copgen``: the paper's Table 1 for the chosen models; prints the table."""
    from copgen_jax import checkpoint
    from copgen_jax.evaluate import copgen_benchmark
    from copgen_jax.evaluate.run import RunModels
    from copgen_jax.modalities import registry_from_config
    shared = any(b != PAPER_BENCHMARK for b in args.benchmark)  # --out holds the run's own benchmarks too
    out = args.out if args.out and not shared else os.path.join(args.out or os.path.join(args.workdir, "eval"),
                                                                PAPER_BENCHMARK)
    loaded = RunModels(args.workdir, args.train_baseline_steps)
    steps = {label: loaded.prepare(label) for label in args.models}
    sources = copgen_benchmark.Sources(args.benchmark_revision, args.conditions_revision, args.conditions_root,
                                       args.hub_cache)
    results = copgen_benchmark.run({label: (lambda label=label: loaded[label]) for label in args.models},
                                   registry_from_config(checkpoint.load_config(args.workdir)), out, settings,
                                   sources, steps=steps, model_runs={m: loaded.run_dir(m) for m in args.models})
    print(copgen_benchmark.table(results))
    print(os.path.join(out, "results.md"))
    return results


if __name__ == "__main__":
    main()
