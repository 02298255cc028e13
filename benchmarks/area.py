"""Mosaics: seams and scaling of generation over an area (``copgen_jax.inference.area``).

seams    On places the run never saw, the synthetic world rendered as one contiguous area of
         ``--footprints`` x ``--footprints`` footprints, S2 L2A generated from DEM + land cover
         over the whole area (``--samples`` samples) by each fusion: ``none`` (naive tiling,
         windows side by side, each sampled on its own), ``step`` (windows overlapping by half
         a footprint or more, ε averaged in the overlaps at every step, tent-weighted;
         ``step:uniform`` with equal weights, plain MultiDiffusion; ``@960``: that overlap in
         metres) and ``neighbours`` (windows in
         waves, each conditioned on the latents its already generated neighbours left in the
         overlaps). Seam ratio = mean |difference| of adjacent pixels across the window borders
         / the same across the other latent-pixel boundaries (a decoder draws each latent pixel
         as a block, so every latent boundary is sharper than a block's inside: comparing like
         with like leaves the seams), on the generated images and on the truth at the same lines.
         Goal: the generated ratio within 10% of the truth's. Also MAE to the truth and the
         seconds each fusion took.
scaling  Seconds and peak resident memory of one step-fused generation against the area (1x1
         to 8x8 footprints, ``--sizes``), each size in a process of its own so its peak is its
         own. Goal: time linear in area, memory flat (bounded by ``--window-batch``).

    python benchmarks/area.py --workdir=runs/demo [--places 2 --footprints 3 --samples 2 --steps 20]

``--example DIR`` writes one unseen place's rasters instead (``<modality>.tif`` at native
resolution, and ``clear.tif``: the clear sky of one of its cloudy dates, the world's own cloud
mask), the inputs of the README's mosaic and gap-filling commands.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from absl import flags  # noqa: E402

from copgen_jax import checkpoint, flagparse  # noqa: E402
from copgen_jax.diffusion.choices import SAMPLERS  # noqa: E402
from copgen_jax.evaluate.data import eval_units  # noqa: E402
from copgen_jax.inference import area as area_lib  # noqa: E402

FLAGS = flagparse.new()
flags.DEFINE_string("workdir", "runs/demo", "a trained run", flag_values=FLAGS)
flags.DEFINE_list("benchmarks", ["seams", "scaling"], "seams, scaling", flag_values=FLAGS)
flags.DEFINE_integer("places", 2, "held-out places for the seams", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("footprints", 3, "the seams' (and --example's) area side, in footprints", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_list("fusions", ["step", "step@960", "step:uniform@960", "neighbours@960", "none"],
                  "fusions compared on the seams: FUSION[:WEIGHTS][@OVERLAP metres] (WEIGHTS tent or uniform; "
                  "default overlap: generate_area's)", flag_values=FLAGS)
flags.DEFINE_list("sizes", ["1", "2", "4", "8"], "area sides (footprints) for the scaling", flag_values=FLAGS)
flags.DEFINE_integer("samples", 2, "samples per area", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("steps", 20, "sampler steps", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum("sampler", "ddim", SAMPLERS, "sampler", flag_values=FLAGS)
flags.DEFINE_integer("window-batch", 8, "windows per network call", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=FLAGS)
flags.DEFINE_string("example", None, "write an unseen place's rasters (conditions, S2 truth, the clear-sky mask "
                    "of a cloudy date) of --footprints a side into this folder, and stop", flag_values=FLAGS)
flags.DEFINE_integer("scaling-point", 0, "internal: run one scaling size and print its JSON", flag_values=FLAGS)
flags.DEFINE_string("out", "benchmarks/results/area_demo.json", "JSON path", flag_values=FLAGS)

GIVEN_PRODUCTS, TARGET_PRODUCT = ("Core-DEM", "Core-LULC"), "Core-S2L2A"
ARGS = None  # the parsed flags (main)


# -- the world as one area ----------------------------------------------------------------------
def held_out_cells(cfg, n: int) -> list[str]:
    """``n`` places of the synthetic world that the run's world does not hold."""
    from copgen_jax.datasets.synthetic.geometry import sample_cells
    p = cfg.pipeline
    seen = set(sample_cells(p.world_seed, p.cells))
    return [c for c in sample_cells(p.world_seed + 7919, n + len(seen)) if c not in seen][:n]


def write_area_files(root, registry, cell: str, side: int, seed: int) -> dict[str, str]:
    """The cell rendered ``side`` x ``side`` footprints; one GeoTIFF per modality (bands named), native 10-60 m."""
    from copgen_jax.datasets.synthetic.world import product_ids
    from copgen_jax.datasets.synthetic.writer import band_file, write_cell
    write_cell(root, cell, 1, seed, side)
    ids = product_ids(seed, cell, 0, side)
    out = {}
    for m in registry.spatial:
        files = [band_file(root, m.product, cell, ids[m.product], b) for b in m.bands]
        path = os.path.join(root, f"{cell}_{m.name}.tif")
        with rasterio.open(files[0]) as first:
            profile = dict(first.profile, count=len(files), compress="deflate")
        with rasterio.open(path, "w", **profile) as dst:
            for i, (band, f) in enumerate(zip(m.bands, files), start=1):
                with rasterio.open(f) as src:
                    dst.write(src.read(1), i)
                dst.set_band_description(i, band)
        out[m.name] = path
    return out


def write_example(out: str, cfg, registry, side: int) -> dict[str, str]:
    """An unseen place, ``side`` footprints a side: one GeoTIFF per modality and ``clear.tif``."""
    import shutil
    from copgen_jax.datasets.synthetic.world import cloudy_sky
    cell = held_out_cells(cfg, 1)[0]
    os.makedirs(out, exist_ok=True)
    files = {n: shutil.copy(p, os.path.join(out, f"{n}.tif"))
             for n, p in write_area_files(os.path.join(out, "world"), registry, cell, side,
                                          cfg.pipeline.world_seed).items()}
    clear, date = cloudy_sky(cfg.pipeline.world_seed, cell, side)
    target = next(n for n in files if registry[n].product == TARGET_PRODUCT)
    with rasterio.open(files[target]) as src:
        profile = dict(src.profile, count=1, dtype="uint8", nodata=None)
    with rasterio.open(os.path.join(out, "clear.tif"), "w", **profile) as dst:
        dst.write(clear.astype(np.uint8)[None])
        dst.update_tags(meaning="1 = clear sky (known), 0 = cloud or shadow", cloud_mask_of_date=str(date))
    shutil.rmtree(os.path.join(out, "world"))
    print(f"{cell}: {', '.join(files.values())} and clear.tif ({(~clear).mean():.0%} cloudy, from date {date})")
    return {**files, "clear": os.path.join(out, "clear.tif")}


# -- seams --------------------------------------------------------------------------------------
def borders(layout, m) -> tuple[list[int], list[int]]:
    """Pixel rows and columns (at ``m``'s GSD) where a window edge lies inside the area."""
    px = layout.pixels(m.gsd)
    rows = sorted({e for r in px[:, 0] for e in (r, r + m.size)})
    cols = sorted({e for c in px[:, 1] for e in (c, c + m.size)})
    return rows, cols


def seam_ratio(images: np.ndarray, rows, cols, period: int) -> float:
    """Mean |adjacent-pixel difference| across the border rows / columns over that across the other
    latent-pixel boundaries (every ``period`` px); images (..., H, W).

    Decoders draw each latent pixel as a ``period``-px block, so differences are larger across
    any latent boundary than inside a block; comparing window borders (which are latent
    boundaries) with the other latent boundaries measures the windows' seams alone.
    """
    def lines(n, borders):
        at = np.zeros(n - 1, bool)
        at[[b - 1 for b in borders if 0 < b < n]] = True
        phase = (np.arange(1, n) % period) == 0
        return at, phase & ~at

    dx, dy = np.abs(np.diff(images, axis=-1)), np.abs(np.diff(images, axis=-2))
    (bx, ox), (by, oy) = lines(images.shape[-1], cols), lines(images.shape[-2], rows)
    across = np.concatenate([dx[..., bx].ravel(), dy[..., by, :].ravel()])
    other = np.concatenate([dx[..., ox].ravel(), dy[..., oy, :].ravel()])
    return float(across.mean() / other.mean())


def seams(model, cfg, target: str, given, tmp) -> dict:
    m = model.registry[target]
    rows = []
    for cell in held_out_cells(cfg, ARGS.places):
        files = write_area_files(os.path.join(tmp, "world"), model.registry, cell, ARGS.footprints,
                                 cfg.pipeline.world_seed)
        row = {"cell": cell}
        for fusion in ARGS.fusions:
            spec, _, overlap = fusion.partition("@")
            name, _, weights = spec.partition(":")
            start = time.time()
            result = area_lib.generate_area(model, target, {n: files[n] for n in given}, n_samples=ARGS.samples,
                                            seed=ARGS.seed, steps=ARGS.steps, sampler=ARGS.sampler, fusion=name,
                                            weights=weights or "tent", overlap=float(overlap) if overlap else None,
                                            window_batch=ARGS.window_batch, stats=False)
            seconds = time.time() - start
            truth, _ = area_lib.read_area(files[target], m, result.grid)
            fake, real = eval_units(m, result[target]), eval_units(m, truth)
            lines = borders(result.layout, m)
            row[fusion] = {"seam_ratio": seam_ratio(fake, *lines, m.downsample),
                           "truth_seam_ratio": seam_ratio(real, *lines, m.downsample),
                           "mae": float(np.abs(fake - real).mean()), "seconds": seconds,
                           "windows": len(result.layout.offsets), "overlap_m": result.settings["overlap_m"]}
            print(f"{cell} {fusion}: {row[fusion]}", flush=True)
        rows.append(row)
    summary = {}
    for fusion in ARGS.fusions:
        values = {k: [r[fusion][k] for r in rows] for k in rows[0][fusion]}
        summary[fusion] = {k: float(np.mean(v)) for k, v in values.items()}
        summary[fusion]["within_10pct_of_truth"] = bool(
            abs(summary[fusion]["seam_ratio"] / summary[fusion]["truth_seam_ratio"] - 1) <= 0.10)
    return {"places": rows, "summary": summary}


# -- scaling ------------------------------------------------------------------------------------
def scaling_point(model, cfg, target, given, side: int, tmp) -> dict:
    cell = held_out_cells(cfg, 1)[0]
    files = write_area_files(os.path.join(tmp, f"world_{side}"), model.registry, cell, side, cfg.pipeline.world_seed)
    seconds = []
    for _ in range(2):  # the first call compiles for this canvas, the second is the generation alone
        start = time.time()
        result = area_lib.generate_area(model, target, {n: files[n] for n in given}, n_samples=1, seed=ARGS.seed,
                                        steps=ARGS.steps, sampler=ARGS.sampler, window_batch=ARGS.window_batch,
                                        stats=False)
        seconds.append(time.time() - start)
    return {"footprints": side, "km2": (side * 1.92) ** 2, "windows": len(result.layout.offsets),
            "seconds_first": seconds[0], "seconds": seconds[1],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def scaling(argv) -> list[dict]:
    points = []
    for side in map(int, ARGS.sizes):
        cmd = [sys.executable, os.path.abspath(__file__), *argv, f"--scaling-point={side}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"scaling point {side}: {done.stderr[-2000:]}")
        points.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"scaling {side}x{side}: {points[-1]}", flush=True)
    return points


def main(argv=None) -> int:
    from copgen_jax.inference.copgen import CopGen
    global ARGS
    ARGS = flagparse.parse(FLAGS, argv, prog="python benchmarks/area.py", description=__doc__.split("\n\n")[0])
    raw = list(sys.argv[1:] if argv is None else argv)
    cfg = checkpoint.load_config(ARGS.workdir)
    if ARGS.example:
        from copgen_jax.modalities import registry_from_config
        write_example(ARGS.example, cfg, registry_from_config(cfg), ARGS.footprints)
        return 0
    model = CopGen.load(ARGS.workdir)
    target = next(m.name for m in model.registry if m.product == TARGET_PRODUCT and not m.is_scalar)
    given = [m.name for m in model.registry if m.product in GIVEN_PRODUCTS]
    with tempfile.TemporaryDirectory() as tmp:
        if ARGS.scaling_point:
            print(json.dumps(scaling_point(model, cfg, target, given, ARGS.scaling_point, tmp)))
            return 0
        out = {"workdir": ARGS.workdir, "generated": target, "given": given,
               "settings": {k: getattr(ARGS, k) for k in ("samples", "steps", "sampler", "window_batch", "seed",
                                                           "footprints", "places")}}
        if "seams" in ARGS.benchmarks:
            out["seams"] = seams(model, cfg, target, given, tmp)
        if "scaling" in ARGS.benchmarks:
            out["scaling"] = scaling([a for a in raw if not a.startswith("--benchmarks")])
    print(table(out))
    os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
    with open(ARGS.out, "w") as f:
        json.dump(out, f, indent=1)
    print(ARGS.out)
    return 0


def table(out) -> str:
    lines = []
    if "seams" in out:
        lines += ["| fusion | overlap (m) | windows | seam ratio | truth's | MAE | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for fusion, s in out["seams"]["summary"].items():
            lines.append(f"| {fusion} | {s['overlap_m']:.0f} | {s['windows']:.0f} | {s['seam_ratio']:.3f} | "
                         f"{s['truth_seam_ratio']:.3f} | {s['mae']:.4f} | {s['seconds']:.1f} |")
    if "scaling" in out:
        lines += ["", "| footprints | km² | windows | seconds | with compilation | peak RSS (MB) |",
                  "|---|---|---|---|---|---|"]
        for p in out["scaling"]:
            lines.append(f"| {p['footprints']}x{p['footprints']} | {p['km2']:.1f} | {p['windows']} | "
                         f"{p['seconds']:.1f} | {p['seconds_first']:.1f} | {p['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
