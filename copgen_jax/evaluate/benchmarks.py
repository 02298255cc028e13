"""The three benchmarks: stochastic (distribution per location), tasks (pointwise), narrowing.

Each takes ``models`` = {label: predictor with ``CopGen.generate``'s signature}, the registry,
the held-out footprint records grouped by location (``copgen_jax.data.footprints.by_location``) and the
``Settings``, and returns a JSON-ready dict. A benchmark (or task, or conditioning level)
whose modality groups the run lacks is skipped with a ``"skipped"`` message, never invented.

Per-example results are flat dicts ``{"<space or modality>/<metric>": value}``, a value a float
or, for the calibration curves (``reliability`` per nominal level of ``metrics.RELIABILITY_LEVELS``,
``pit`` per bin of the PIT histogram), a list; ``summarise`` turns a list of them into
``{key: {"mean", "std", "n"}}`` over the finite values (element-wise for the curves).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from copgen_jax.evaluate import metrics
from copgen_jax.evaluate.data import (Group, Progress, complete, eval_units, generate_batched, location_key,
                                      resolve, short, stack)
from copgen_jax.evaluate.metrics.pointwise import SSIM_WINDOW
from copgen_jax.modalities import CATEGORICAL, IMAGE, Registry

# Major TOM products the benchmarks are written in (``Modality.product``).
DEM, LULC, S1, S2L1C, S2L2A = "Core-DEM", "Core-LULC", "Core-S1RTC", "Core-S2L1C", "Core-S2L2A"
VALID_BAND = "B02"  # a real image counts if >= 95 % of its B02 pixels are non-zero (SPEC §6)

STOCHASTIC = ((Group(DEM), Group(LULC)), (Group(S2L2A, IMAGE),))
TASKS = {  # name -> (given groups, generated groups)
    "S1RTC->S2L2A": ((Group(S1),), (Group(S2L2A, IMAGE),)),
    "S2L2A->S1RTC": ((Group(S2L2A, IMAGE),), (Group(S1),)),
    "S2L2A infill": ((Group(S2L2A, IMAGE, "finest"),), (Group(S2L2A, IMAGE, "coarser"),)),
    "S2L1C infill": ((Group(S2L1C, IMAGE, "finest"),), (Group(S2L1C, IMAGE, "coarser"),)),
    "S2L2A->LULC": ((Group(S2L2A, IMAGE),), (Group(LULC),)),
    "S2L2A->DEM": ((Group(S2L2A, IMAGE),), (Group(DEM),)),
}
NARROWING = (Group(DEM), Group(LULC), Group(S1), Group(S2L1C))  # added one by one to "nothing"


@dataclasses.dataclass(frozen=True)
class Settings:
    cells: int = 0  # footprint locations evaluated (0 = all held-out ones)
    samples: int = 16  # generated samples per input (K)
    steps: int = 50
    sampler: str = "ddim"
    seed: int = 0
    chunk: int = 8  # inputs per generate call
    k: int = 5  # k of the k-NN precision / recall


def summarise(rows: list[dict]) -> dict:
    """{key: {"mean", "std", "n"}} over the finite values of each key; a list-valued key (a curve)
    gets element-wise lists over the rows whose whole curve is finite."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    for key in keys:
        v = np.asarray([r[key] for r in rows if key in r], np.float64)
        v = v[np.isfinite(v.reshape(len(v), -1)).all(1)]
        mean, std = (v.mean(0), v.std(0)) if len(v) else (np.full(v.shape[1:], np.nan),) * 2
        out[key] = {"mean": mean.tolist(), "std": std.tolist(), "n": int(len(v))}
    return out


COVERAGE_LEVEL = metrics.RELIABILITY_LEVELS.index(0.9)  # the curve's point that is the [5, 95] interval


def calibration(truth: np.ndarray, samples: np.ndarray, seed=0) -> dict:
    """One truth against its N samples (N, *truth.shape): 5-95 % interval coverage and the
    calibration curves (as lists), from one set of the PIT's randomising draws."""
    curve = metrics.reliability(truth, samples, seed=seed)
    return {"interval_coverage": float(curve[COVERAGE_LEVEL]), "reliability": curve.tolist(),
            "pit": metrics.pit_histogram(truth, samples, seed=seed).tolist()}


def _locations(groups: dict, cells: int) -> list:
    """``cells`` footprint locations (all when 0), one per held-out cell before a second from any."""
    per_cell: dict = {}
    for key in groups:
        per_cell.setdefault(key[0], []).append(key)
    depth = max((len(v) for v in per_cell.values()), default=0)
    keys = [v[i] for i in range(depth) for v in per_cell.values() if i < len(v)]
    return keys[:cells] if cells else keys


def _skip(name: str, reason: str) -> dict:
    logging.warning("%s skipped: %s", name, reason)
    return {"skipped": reason}


# -- stochastic ----------------------------------------------------------------------------
def embeddings(registry: Registry, names, images: dict) -> dict[str, np.ndarray]:
    """Per image: the band-mean spectrum over every group (zeros excluded, evaluation units) and
    the structure embedding of the finest group."""
    spectra = np.concatenate([metrics.spectra_embedding(eval_units(registry[n], images[n])) for n in names], -1)
    finest = min(names, key=lambda n: registry[n].gsd)
    return {"spectra": spectra, "structure": metrics.structure_embedding(eval_units(registry[finest], images[finest]))}


def set_metrics(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    precision, recall = metrics.precision_recall(real, fake, k)
    return {"precision": precision, "recall": recall, "nn_accuracy": metrics.nn_accuracy(real, fake),
            "mmd": metrics.mmd(real, fake), "wasserstein": float(np.mean(metrics.wasserstein_per_band(real, fake))),
            "range_coverage": float(np.mean(metrics.spectral_range_coverage(real, fake))),
            "intra_real": metrics.intra_set_distance(real), "intra_generated": metrics.intra_set_distance(fake)}


def _pixel_std(registry, names, images) -> float:
    """Mean per-pixel std over the set, evaluation units, averaged over groups."""
    return float(np.mean([eval_units(registry[n], images[n]).std(0).mean() for n in names]))


def _valid(registry, names, record) -> bool:
    m = registry[min(names, key=lambda n: registry[n].gsd)]
    band = m.bands.index(VALID_BAND) if VALID_BAND in m.bands else 0
    return bool(metrics.valid_real_image(record["pixels"][m.name], band))


def stochastic(models: dict, registry: Registry, groups: dict, s: Settings) -> dict:
    """Per location: its K real observations against K samples generated from DEM + land cover."""
    given, missing = resolve(registry, STOCHASTIC[0])
    target, missing_t = resolve(registry, STOCHASTIC[1])
    if missing or missing_t:
        return _skip("stochastic", f"the run has no modality for {', '.join(missing + missing_t)}")
    locs = []
    for loc in groups:
        real = [r for r in complete(groups[loc], given + target) if _valid(registry, target, r)][:s.samples]
        if len(real) >= 2:
            locs.append((loc, real))
    locs = locs[:s.cells] if s.cells else locs
    if not locs:
        return _skip("stochastic", f"no held-out location has 2 valid observations with {', '.join(given + target)}")
    conditions = {n: stack([real[0] for _, real in locs], n) for n in given}
    out = {"given": list(given), "generated": list(target), "locations": len(locs),
           "real_per_location": [len(real) for _, real in locs], "models": {}, "per_location": {}, "example": {}}
    for label, model in models.items():
        k_max = max(len(real) for _, real in locs)  # K generated against K real: no more is used
        samples = generate_batched(model, target, conditions, len(locs), k_max, chunk=min(s.chunk, len(locs)),
                                   seed=s.seed, steps=s.steps, sampler=s.sampler,
                                   progress=Progress(f"stochastic [{label}] locations", len(locs)))
        rows = []
        for i, (loc, real) in enumerate(locs):
            real_images = {n: stack(real, n) for n in target}
            fake_images = {n: samples[n][i, :len(real)] for n in target}
            er, ef = embeddings(registry, target, real_images), embeddings(registry, target, fake_images)
            row = {"location": location_key(loc), "k": len(real),
                   "pixel_std/real": _pixel_std(registry, target, real_images),
                   "pixel_std/generated": _pixel_std(registry, target, fake_images)}
            for space in er:
                row.update({f"{space}/{k}": v for k, v in set_metrics(er[space], ef[space], s.k).items()})
            rows.append(row)
            if i == 0:
                out["example"] = {"location": location_key(loc), "real": er["spectra"].tolist(),
                                  "bands": [f"{short(registry[n].product)} {b}" for n in target
                                            for b in registry[n].bands]}
                out["example"][label] = ef["spectra"].tolist()
        out["models"][label] = summarise([{k: v for k, v in r.items() if k not in ("location",)} for r in rows])
        out["per_location"][label] = rows
    return out


# -- pointwise tasks ------------------------------------------------------------------------
def image_metrics(truth: np.ndarray, samples: np.ndarray, seed=0) -> dict:
    """One image (C, H, W) against its N samples (N, C, H, W), evaluation units; band-averaged
    (``seed``: the PIT's randomising draws)."""
    fns = {"mae": metrics.mae, "rmse": metrics.rmse, "psnr": metrics.psnr}
    if min(truth.shape[-2:]) >= SSIM_WINDOW:
        fns["ssim"] = metrics.ssim
    best = {"mae": np.min, "rmse": np.min, "psnr": np.max, "ssim": np.max}
    out = {}
    for key, fn in fns.items():
        per_sample = np.asarray([np.mean(fn(x, truth)) for x in samples])
        out[key] = float(per_sample.mean())
        out[f"{key}_best_of_n"] = float(best[key](per_sample))
        out[f"{key}_ensemble_mean"] = float(np.mean(fn(samples.mean(0), truth)))
    out.update(crps=metrics.crps(truth, samples), spread=float(samples.std(0).mean()),
               **calibration(truth, samples, seed))
    return out


def class_metrics(truth: np.ndarray, samples: np.ndarray, k: int) -> dict:
    """One class-index map (H, W) against its N sampled maps (N, H, W); per image."""
    acc = np.asarray([metrics.class_accuracy(x, truth, num_classes=k) for x in samples])
    iou = np.asarray([metrics.miou(x, truth, num_classes=k) for x in samples])
    votes = np.stack([(samples == c).sum(0) for c in range(k)])
    mode = votes.argmax(0)
    return {"accuracy": float(acc.mean()), "accuracy_best_of_n": float(acc.max()),
            "accuracy_mode": metrics.class_accuracy(mode, truth, num_classes=k),
            "miou": float(np.nanmean(iou)), "miou_best_of_n": float(np.nanmax(iou)),
            "miou_mode": metrics.miou(mode, truth, num_classes=k),
            "disagreement": float(1.0 - votes.max(0).mean() / len(samples))}


def pointwise(registry: Registry, names, truth: dict, samples: dict, seed=0) -> dict:
    """{"<modality>/<metric>": value} for one example: truth (*physical), samples (N, *physical)."""
    row = {}
    for n in names:
        m = registry[n]
        t, x = eval_units(m, truth[n]), eval_units(m, samples[n])
        got = class_metrics(t, x, m.num_classes) if m.kind == CATEGORICAL else image_metrics(t, x, seed)
        row.update({f"{n}/{k}": v for k, v in got.items()})
    return row


def tasks(models: dict, registry: Registry, groups: dict, s: Settings, only=None) -> dict:
    """Each task of ``TASKS`` (or of ``only``) on every held-out observation that has its modalities."""
    out = {}
    for name, (given_groups, target_groups) in TASKS.items():
        if only is not None and name not in only:
            continue
        given, missing = resolve(registry, given_groups)
        target, missing_t = resolve(registry, target_groups)
        if missing or missing_t:
            out[name] = _skip(f"task {name}", f"the run has no modality for {', '.join(missing + missing_t)}")
            continue
        records = [r for loc in _locations(groups, s.cells) for r in complete(groups[loc], given + target)]
        if not records:
            out[name] = _skip(f"task {name}", f"no held-out footprint has {', '.join(given + target)}")
            continue
        res = {"given": list(given), "generated": list(target), "examples": len(records),
               "reliability_levels": list(metrics.RELIABILITY_LEVELS), "models": {},
               "description": " + ".join(g.label(registry) for g in given_groups) + " -> "
               + " + ".join(g.label(registry) for g in target_groups)}
        conditions = {n: stack(records, n) for n in given}
        for label, model in models.items():
            samples = generate_batched(model, target, conditions, len(records), s.samples,
                                       chunk=min(s.chunk, len(records)), seed=s.seed, steps=s.steps,
                                       sampler=s.sampler, progress=Progress(f"task {name} [{label}]", len(records)))
            rows = [pointwise(registry, target, r["pixels"], {n: samples[n][i] for n in target}, seed=(s.seed, i))
                    for i, r in enumerate(records)]
            res["models"][label] = summarise(rows)
        out[name] = res
    return out


# -- narrowing ------------------------------------------------------------------------------
def narrowing_levels(registry: Registry) -> tuple[list[tuple[str, tuple]], list[str]]:
    """[(label, given names)] from nothing up, each adding one group; messages for groups absent."""
    levels, given, labels, skipped = [("nothing", ())], (), [], []
    for group in NARROWING:
        names, missing = resolve(registry, (group,))
        if missing:
            skipped.append(f"+ {missing[0]}: the run has no modality for it")
            logging.warning("narrowing level + %s skipped: the run has no modality for it", missing[0])
            continue
        given, labels = given + names, labels + [short(group.product)]
        levels.append((" + ".join(labels), given))
    return levels, skipped


def spread_metrics(registry: Registry, names, truth: dict, samples: dict, seed=0) -> dict:
    """Per-pixel std over the N samples, calibration (and its curves) and ensemble-mean MAE;
    averaged over groups."""
    parts = []
    for n in names:
        t, x = eval_units(registry[n], truth[n]), eval_units(registry[n], samples[n])
        parts.append({"pixel_std": float(x.std(0).mean()), "crps": metrics.crps(t, x),
                      "mae_ensemble_mean": float(np.abs(x.mean(0) - t).mean()), **calibration(t, x, seed)})
    return {k: np.mean([p[k] for p in parts], 0).tolist() for k in parts[0]}


def narrowing(models: dict, registry: Registry, groups: dict, s: Settings) -> dict:
    """The spread of generated S2 L2A as conditioning grows, on the same held-out observations."""
    target, missing = resolve(registry, (Group(S2L2A, IMAGE),))
    if missing:
        return _skip("narrowing", f"the run has no modality for {missing[0]} to generate")
    levels, skipped = narrowing_levels(registry)
    records = [r for loc in _locations(groups, s.cells) for r in complete(groups[loc], levels[-1][1] + target)]
    if not records:
        return _skip("narrowing", f"no held-out footprint has {', '.join(levels[-1][1] + target)}")
    out = {"generated": list(target), "examples": len(records), "skipped": skipped,
           "reliability_levels": list(metrics.RELIABILITY_LEVELS), "levels": []}
    for label, given in levels:
        level = {"label": label, "given": list(given), "models": {}}
        for name, model in models.items():
            samples = generate_batched(model, target, {n: stack(records, n) for n in given}, len(records), s.samples,
                                       chunk=min(s.chunk, len(records)), seed=s.seed, steps=s.steps,
                                       sampler=s.sampler, progress=Progress(f"narrowing {label} [{name}]", len(records)))
            level["models"][name] = summarise([spread_metrics(registry, target, r["pixels"],
                                                              {n: samples[n][i] for n in target}, seed=(s.seed, i))
                                               for i, r in enumerate(records)])
        out["levels"].append(level)
    return out
