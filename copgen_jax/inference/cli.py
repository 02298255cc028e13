"""``copgen-sample``: generate modalities of one footprint from GeoTIFF and scalar conditions.

    copgen-sample --workdir runs/demo --generate S2L2A_B02_B03_B04_B08 \\
        --condition DEM_DEM=dem.tif --condition LULC_LULC=landcover.tif \\
        --lat 45.9 --lon 6.9 --date 2021-07-15 --n-samples 8 --steps 50 --out samples/

Writes under ``--out``: ``<modality>/sample_<j>.tif`` per sample at the modality's native
resolution on the conditioning footprint, the per-pixel statistics (``mean``, ``std``,
quantiles; class maps ``mode``, ``uncertainty``) as GeoTIFFs beside them, ``sheet.png``
(conditions | samples | mean | std) and ``summary.json`` (settings, generated scalars, files).
The footprint is the conditioning GeoTIFFs'; with scalar conditions only, a footprint of
the registry's size centred on --lat/--lon in its UTM zone.

Areas: condition GeoTIFFs larger than one footprint (any extent, a metric CRS) are generated
over their common extent as one image per modality (``inference/area.py``): footprint windows
overlapping by ``--overlap`` metres (default three quarters of a footprint) fused at every denoising step
(``--fusion step``), conditioned on their neighbours (``neighbours``) or tiled side by side
(``none``), ``--window-batch`` windows per network call. The outputs are the same files over the
area's grid; ``summary.json`` adds the grid and the windows. ``--known`` works over an area too
(a cloudy scene larger than a footprint), with ``--fusion step`` or ``neighbours``.

Gap filling: ``--known S2L2A_B02_B03_B04_B08=scene.tif --known-mask clear.tif`` generates that
modality with its known pixels kept (exactly, std 0 there): the mask is a one-band GeoTIFF on
the modality's grid, nonzero = known (``--known-mask NAME=PATH`` for one of several --known);
or ``--known-nodata VALUE`` marks the unknown pixels by value; with neither, the file's own
nodata / NaN pixels are the unknown ones.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import tqdm
from absl import flags

from copgen_jax import flagparse
from copgen_jax.diffusion.choices import SAMPLERS  # no JAX: --help stays quick

from copgen_jax import storage

FLAGS = flagparse.new()
flags.DEFINE_string("workdir", None, "run directory (or <workdir>/checkpoints/<step>)", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)", flag_values=FLAGS)
flags.DEFINE_multi_string("generate", [], "modality to generate (repeat)", flag_values=FLAGS)
flags.DEFINE_multi_string("condition", [], "spatial condition as a GeoTIFF (repeat)", flag_values=FLAGS)
flags.DEFINE_float("lat", None, "latitude of the footprint centre, degrees", flag_values=FLAGS)
flags.DEFINE_float("lon", None, "longitude of the footprint centre, degrees", flag_values=FLAGS)
flags.DEFINE_string("date", None, "acquisition date, YYYY-MM-DD", flag_values=FLAGS)
flags.DEFINE_integer("n-samples", 4, "samples to draw", flag_values=FLAGS)
flags.DEFINE_integer("steps", 50, "network evaluations per sample", flag_values=FLAGS)
flags.DEFINE_enum("sampler", "ddim", SAMPLERS, "sampler: DDIM, DPM-Solver++(2M) or its SDE variant",
                  flag_values=FLAGS)
flags.DEFINE_float("eta", None, "noise per step: ddim 0 (deterministic, the default) .. 1 (ancestral); dpm++sde "
                   "1 (the SDE, the default) .. 0 (dpm++)", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=FLAGS)
flags.DEFINE_float("guidance", 1.0, "classifier-free guidance weight (1: plain conditional; > 1 follows the "
                   "conditions more closely, two network evaluations per step)", flag_values=FLAGS)
flags.DEFINE_enum("absent", None, ("drop", "noise", "mask"),
                  "modalities neither given nor generated (default: from the run's training)", flag_values=FLAGS)
flags.DEFINE_multi_string("units", [], "e.g. S1RTC_vh_vv=db (repeat)", flag_values=FLAGS)
flags.DEFINE_multi_string("known", [], "partly known modality as a GeoTIFF: generated with its known pixels kept "
                          "(repeat)", flag_values=FLAGS)
flags.DEFINE_multi_string("known-mask", [], "one-band GeoTIFF of the known pixels (nonzero = known), for every "
                          "--known, or NAME=PATH for one", flag_values=FLAGS)
flags.DEFINE_float("known-nodata", None, "the --known files' value of unknown pixels (instead of --known-mask)",
                   flag_values=FLAGS)
flags.DEFINE_integer("resample", 0, "RePaint jumps per step with --known (each costs a step's evaluations)",
                     flag_values=FLAGS)
flags.DEFINE_float("overlap", None, "areas: metres neighbouring windows share (default: three quarters of a footprint; none "
                   "with --fusion none)", flag_values=FLAGS)
flags.DEFINE_enum("fusion", "step", ("step", "neighbours", "none"), "areas: how overlapping windows are fused",
                  flag_values=FLAGS)
flags.DEFINE_integer("window-batch", 8, "areas: footprint windows per network call (bounds the memory)",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("out", None, "output directory", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir", "out"], flag_values=FLAGS)
METAVARS = {"generate": "NAME", "condition": "NAME=PATH.tif", "units": "NAME=UNIT", "known": "NAME=PATH.tif",
            "known-mask": "[NAME=]PATH.tif", "known-nodata": "VALUE"}


def parse_args(argv=None):
    return flagparse.parse(FLAGS, argv, prog="copgen-sample", description=__doc__.split("\n\n")[0],
                           metavars=METAVARS)


def _pairs(items, flag):
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


def build_conditions(args, registry) -> dict:
    """GeoTIFF conditions plus the scalar ones, matched to the registry by codec (never by name)."""
    from copgen_jax.codecs import Date, LatLon
    conditions = _pairs(args.condition, "--condition")
    for name, path in conditions.items():
        if registry[name].is_scalar:
            raise ValueError(f"--condition {name}: scalar modalities take --lat/--lon or --date, not a file")
        if not storage.path(path).exists():
            raise FileNotFoundError(f"--condition {name}={path}: file not found")
    if (args.lat is None) != (args.lon is None):
        raise ValueError("give --lat and --lon together")
    scalars = {LatLon: None if args.lat is None else np.array([args.lat, args.lon]), Date: args.date}
    for codec, value in scalars.items():
        if value is None:
            continue
        found = [m.name for m in registry if isinstance(m.codec, codec)]
        if not found:
            raise ValueError(f"this model has no {codec.__name__} modality: drop --lat/--lon or --date")
        registry[found[0]].validate(value)  # a bad date fails here, before any loading
        conditions[found[0]] = value
    return conditions


def build_known(args, registry) -> dict:
    """--known files with their mask (--known-mask), nodata value (--known-nodata) or neither."""
    from copgen_jax.inference import geo
    known = _pairs(args.known, "--known")
    if args.known_mask and args.known_nodata is not None:
        raise ValueError("give --known-mask or --known-nodata, not both")
    if (args.known_mask or args.known_nodata is not None) and not known:
        raise ValueError("--known-mask / --known-nodata need a --known NAME=PATH")
    masks = _masks(args.known_mask, known, registry)
    for name, path in known.items():
        if registry[name].is_scalar:
            raise ValueError(f"--known {name}: a scalar modality takes --lat/--lon or --date")
        if not storage.path(path).exists():
            raise FileNotFoundError(f"--known {name}={path}: file not found")
    return {n: (p, geo.read_mask(masks[n], registry[n]) if n in masks else args.known_nodata)
            for n, p in known.items()}


def _masks(items, known, registry) -> dict:
    """--known-mask values -> {known name: mask path}: a bare PATH is every --known's mask."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name in registry.names:
            if name not in known:
                raise ValueError(f"--known-mask {item}: {name} has no --known {name}=PATH")
            out[name] = path
        else:
            out.update({n: item for n in known})
    return out


class Progress:
    """A tqdm bar on stderr per sampling stage."""

    def __init__(self, stream=None):
        self.stream, self.stage, self.bar = stream, None, None

    def __call__(self, stage, done, total):
        if stage != self.stage or self.bar is None:
            if self.bar is not None:
                self.bar.close()
            self.stage = stage
            self.bar = tqdm.tqdm(total=total, desc=stage, file=self.stream or sys.stderr, unit="step")
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
            self.bar = None


def run(args) -> dict:
    from copgen_jax.inference import area, geo
    from copgen_jax.inference import visualize
    from copgen_jax.inference.copgen import CopGen
    from copgen_jax.codecs import LatLon
    from copgen_jax.modalities import registry_from_config
    from copgen_jax import checkpoint
    from copgen_jax.inference import load as generate_load

    workdir, _ = generate_load.run_dir(args.workdir, args.step)
    registry = registry_from_config(checkpoint.load_config(workdir))
    if not args.generate and not args.known:
        raise ValueError(f"nothing to generate: pass --generate NAME, one of {', '.join(registry.names)}")
    for name in args.generate:
        registry[name]  # unknown names fail before any loading
    conditions = build_conditions(args, registry)
    rasters = {**{n: p for n, p in conditions.items() if not registry[n].is_scalar}, **_pairs(args.known, "--known")}
    if area.is_area(rasters, registry):
        return run_area(args, workdir, registry, conditions)
    known = build_known(args, registry)
    if not any(not registry[n].is_scalar for n in (*conditions, *known)) and args.lat is None:
        raise ValueError("cannot place the outputs on the map: give a GeoTIFF --condition or --lat/--lon")
    units = _pairs(args.units, "--units")
    print(f"loading {args.workdir}", file=sys.stderr)
    model = CopGen.load(args.workdir, args.step)
    gen = model.generate(args.generate, conditions, n_samples=args.n_samples, seed=args.seed, steps=args.steps,
                         sampler=args.sampler, eta=args.eta, absent=args.absent, guidance=args.guidance,
                         stats=True, units=units, known=known, resample=args.resample,
                         progress=Progress())
    footprint = gen.footprints[0]
    if footprint is None:
        side = registry.spatial[0].size * registry.spatial[0].gsd
        footprint = geo.Footprint.centred_on(args.lat, args.lon, side)
    files = geo.write_generation(args.out, gen, footprint)
    files.append(visualize.sheet(gen, storage.path(args.out) / "sheet.png"))
    summary = {"workdir": os.fspath(args.workdir), "seed": args.seed, "crs": str(footprint.crs),
               "footprint_corner": list(footprint.corner), "footprint_side_m": footprint.side,
               **{k: v for k, v in gen.settings.items() if k != "units"}, "units": units,
               "scalars": _scalars(gen, LatLon), "files": [os.fspath(storage.path(f).relative_to(storage.path(args.out))) for f in files]}
    storage.write_text(storage.path(args.out) / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


def area_known(args, registry) -> dict:
    """--known files over an area: (path, mask file | --known-nodata | None), read onto the area's grid later."""
    known = _pairs(args.known, "--known")
    if args.known_mask and args.known_nodata is not None:
        raise ValueError("give --known-mask or --known-nodata, not both")
    masks = _masks(args.known_mask, known, registry)
    for path in (*known.values(), *masks.values()):
        if not storage.path(path).exists():
            raise FileNotFoundError(f"--known / --known-mask {path}: file not found")
    return {n: (p, masks.get(n, args.known_nodata)) for n, p in known.items()}


def run_area(args, workdir, registry, conditions) -> dict:
    """Conditions larger than a footprint: one generation over their common extent."""
    from copgen_jax.inference import area, visualize
    from copgen_jax.inference.copgen import CopGen
    known = area_known(args, registry)
    if args.units:
        raise ValueError("--units over an area: give the area's rasters in the registry's units (S1 as linear "
                         "power)")
    print(f"loading {args.workdir}", file=sys.stderr)
    model = CopGen.load(args.workdir, args.step)
    result = model.generate_area(args.generate, conditions, n_samples=args.n_samples, seed=args.seed,
                                 steps=args.steps, sampler=args.sampler, eta=args.eta, absent=args.absent,
                                 guidance=args.guidance, overlap=args.overlap, fusion=args.fusion,
                                 window_batch=args.window_batch, known=known, resample=args.resample,
                                 progress=Progress())
    files = area.write_area(args.out, result)
    files.append(visualize.sheet(result.as_generation(), storage.path(args.out) / "sheet.png"))
    g = result.grid
    summary = {"workdir": os.fspath(workdir), "seed": args.seed, "crs": str(g.crs), "area_corner": [g.x0, g.y0],
               "area_m": [g.width, g.height], "window_offsets_m": result.layout.offsets.tolist(),
               **result.settings,
               "files": [os.fspath(storage.path(f).relative_to(storage.path(args.out))) for f in files]}
    storage.write_text(storage.path(args.out) / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


def _scalars(gen, latlon_codec) -> dict:
    out = {}
    for name, samples in gen.samples.items():
        m = gen.registry[name]
        if m.is_scalar:
            out[name] = {"samples": np.asarray(samples[0]).tolist() if isinstance(m.codec, latlon_codec)
                         else [str(d) for d in samples[0]],
                         **{k: np.asarray(v[0]).tolist() if np.asarray(v).dtype.kind != "M" else str(v[0])
                            for k, v in gen.stats.get(name, {}).items()}}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, FileNotFoundError) as e:  # ModalityError is a ValueError
        print(f"copgen-sample: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(summary['files'])} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
