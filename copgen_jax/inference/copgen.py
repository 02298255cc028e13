"""Any-to-any generation with a trained run: ``CopGen.load(workdir).generate(...)``.

A run directory (see ``copgen_jax.trainers.loop``, ``copgen_jax.latents.store``)::

    <workdir>/config.json                       the backbone's config (registry, model, diffusion)
    <workdir>/checkpoints/<step>/ema_params     backbone weights (sampling uses the EMA)
    <workdir>/tokenizers/<modality>/            one tokenizer run per spatial modality,
                                                with scale_factor.json (else the registry's factor)

``generate`` in three steps:
  1. Conditions (physical units, or GeoTIFF paths for spatial modalities) are checked and
     normalised by the registry, encoded once by their tokenizer as a *sampled* posterior
     latent (seeded) times the scale factor — a scalar's 3-vector is its latent — and repeated
     for the N samples, as the reference does.
  2. The B·N rows are sharded over the mesh's batch axes (padded to a multiple of them) and the
     requested modalities sampled by one jitted DDIM / DPM-Solver++ loop, with the conditions
     held clean at timestep 0. Each (generate set, given set, steps, sampler, rows) compiles once.
     The seed fixes everything: row r's noise depends on (seed, r) alone (JAX's partitionable
     threefry), so the padding and the device count do not change the draws.
  3. Generated latents / scale factor -> tokenizer decoder -> registry denormalisation (class
     maps: argmax -> class codes): arrays (B, N, *m.physical_shape) in physical units.

Rasters larger than one footprint: ``generate_area`` (``inference/area.py``), overlapping
footprint windows fused at every step into one georeferenced image per modality.

A generated modality may be partly known (``known=``, gap filling): its known latent pixels are
held by the sampler and its known pixels pasted back after decoding (``inference/known.py``).

Modalities neither given nor generated ("absent"): a run trained with presence masks
(``diffusion.modality_dropout > 0``) saw samples without them, so they are dropped from the
token sequence ("drop": exact, and the fastest). A run trained without masks never saw a
shorter sequence; it did see every modality at timestep N, fully noised, which carries no
information about it, so fresh noise at N marginalises the absent modality ("noise"). The
reference release feeds that noise at timestep 0, telling the model the noise is clean data:
an input it never saw, which biases what it generates. "mask" runs the full sequence with the
absent modalities masked out of attention (for checks and benchmarks; equal to "drop").
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from copgen_jax import checkpoint, parallel
from copgen_jax.inference import load as generate_load
from copgen_jax.inference import geo
from copgen_jax.inference import known as known_lib
from copgen_jax.inference.generation import Generation
from copgen_jax.diffusion import choices, samplers
from copgen_jax.diffusion.schedule import schedule_from_config
from copgen_jax.inference.stats import sample_stats
from copgen_jax.models.tokenizer import sample_latent
from copgen_jax.modalities import CATEGORICAL, Modality, ModalityError, Registry, registry_from_config

ABSENT = ("drop", "noise", "mask")
Progress = Callable[[str, int, int], None]


def local_mesh():
    """All local devices on the data axis: rows are split, parameters replicated."""
    return parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())


class CopGen:
    """A loaded model: backbone, tokenizers and registry, ready to generate.

    ``autoencoders`` maps spatial modalities to their tokenizer's autoencoder; ``load`` gives
    every one, a caller building a CopGen by hand may give only those its requests use.
    """

    def __init__(self, cfg, registry: Registry, backbone: nnx.Module, autoencoders: Mapping, *, mesh=None,
                 decode_batch: int = 32):
        self.cfg, self.registry = cfg, registry
        self.mesh = mesh if mesh is not None else local_mesh()
        self.rules = parallel.rules_from_config(cfg.mesh)
        self.schedule = schedule_from_config(cfg)
        self.default_absent = "drop" if cfg.diffusion.modality_dropout > 0 else "noise"
        self.decode_batch = decode_batch
        self._graphdef, params = nnx.split(backbone, nnx.Param)
        self._params = jax.device_put(params, parallel.param_shardings(backbone, self.mesh, self.rules))
        replicated = NamedSharding(self.mesh, P())
        self._tokenizers = {}
        for name, ae in autoencoders.items():
            generate_load.check_tokenizer(ae, registry[name], "CopGen")
            graphdef, state = nnx.split(ae)
            encode = jax.jit(lambda st, x, key, g=graphdef: sample_latent(*nnx.merge(g, st).encode(x), key))
            decode = jax.jit(lambda st, z, g=graphdef: nnx.merge(g, st).decode(z))
            self._tokenizers[name] = (jax.device_put(state, replicated), encode, decode)
        self._samplers: dict = {}
        self._progress: Progress | None = None
        self._ticks = self._steps_now = 0

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def load(cls, path, step: int | None = None, *, mesh=None, tokenizers_dir=None, weights: str = "ema",
             **kwargs) -> "CopGen":
        """Load ``<workdir>`` (newest checkpoint, or ``step``) or ``<workdir>/checkpoints/<step>``.

        Parameters are restored straight into their shardings on ``mesh`` (default: every
        local device on the data axis); tokenizers from ``<workdir>/tokenizers/<modality>/``.
        weights: "ema" (the moving average, what sampling uses) or "raw" (the optimiser's last iterate).
        """
        workdir, step = generate_load.run_dir(path, step)
        cfg = checkpoint.load_config(workdir)
        registry = registry_from_config(cfg)
        autoencoders, registry = generate_load.load_autoencoders(tokenizers_dir or workdir / "tokenizers", registry)
        mesh = mesh if mesh is not None else local_mesh()
        backbone = generate_load.restore_backbone(cfg, registry, workdir, step, mesh, weights)
        return cls(cfg, registry, backbone, autoencoders, mesh=mesh, **kwargs)

    # -- the public call ---------------------------------------------------------------
    def generate(self, generate: Sequence[str] | str, conditions: Mapping | None = None, *, n_samples: int = 1,
                 seed: int = 0, steps: int = 50, sampler: str = "ddim", eta: float | None = None,
                 spacing: str | None = None, absent: str | None = None, stats: bool = False,
                 quantiles: Sequence[float] = (0.05, 0.5, 0.95), units: Mapping | None = None,
                 guidance: float = 1.0, progress: Progress | None = None, known: Mapping | None = None,
                 resample: int = 0) -> Generation:
        """Generate ``n_samples`` of each modality in ``generate`` per input, given ``conditions``.

        conditions: name -> physical-unit array of ``m.physical_shape`` with or without a leading
          batch axis (B), or a GeoTIFF path (list of paths for a batch) for spatial modalities;
          inputs of batch 1 are broadcast to the others' B. units: e.g. {S1 name: "db"}.
        sampler: one of ``samplers.SAMPLERS``: "ddim", "dpm++" (DPM-Solver++(2M)) or "dpm++sde" (its SDE
          variant: fresh noise at every step). eta: the noise each step adds; default 0 for ddim
          (deterministic), 1 for dpm++sde (the SDE; 0 is dpm++); ignored by dpm++.
        spacing: timestep grid; default "logsnr" for dpm++ and dpm++sde (far more accurate there),
          else "uniform".
        absent: "drop" | "noise" | "mask" for modalities neither given nor generated (module doc);
          default "drop" for runs trained with presence masks, else "noise".
        guidance: classifier-free guidance weight (``samplers.sample``); 1 is plain conditional
          sampling, > 1 pushes samples towards the conditions and costs a second evaluation per step.
        known: name -> (pixels, mask) for a modality that is partly known: pixels as a condition
          (array or GeoTIFF path), mask a boolean (H, W) or (B, H, W), True = known (a cloud mask:
          ``~cloudy``); or (pixels, nodata value), or (pixels, None) for "known where finite". The
          modality is generated (added to ``generate``) with its known part kept: exactly in the
          returned pixels, where every sample agrees; a latent pixel is held only when all the
          pixels under it are known (``inference/known.py``).
        resample: RePaint jumps per sampler step with ``known`` (``samplers.sample``); each one
          costs a step's evaluations again.
        """
        generate = (generate,) if isinstance(generate, str) else tuple(generate)
        conditions = dict(conditions or {})
        partial = self._read_known(dict(known or {}), conditions)
        generate += tuple(n for n in partial if n not in generate)
        units = dict(units or {})
        absent = absent or self.default_absent
        spacing = spacing or choices.default_spacing(sampler)
        eta = choices.default_eta(sampler) if eta is None else eta
        self._check_request(generate, conditions, n_samples, absent, quantiles)
        missing = [n for n in (*generate, *conditions) if not self.registry[n].is_scalar and n not in self._tokenizers]
        if missing:
            raise FileNotFoundError(f"no tokenizer for {', '.join(missing)}: expected one run per spatial "
                                    "modality under <workdir>/tokenizers/<modality>/")
        self._progress = progress
        physical, pixels, footprints = self._read_conditions(conditions, units, partial)
        batch = len(footprints)
        partial = {n: known_lib.broadcast(k, batch) for n, k in partial.items()}
        key = jax.random.key(seed)
        cond = self._encode(pixels, jax.random.fold_in(key, 0))
        held = self._encode_known(partial, units, jax.random.fold_in(key, 2))
        self._report("encode", 1, 1)
        latents = self._sample(cond, generate, batch, n_samples, jax.random.fold_in(key, 1), known=held,
                               steps=steps, sampler=sampler, eta=eta, spacing=spacing, absent=absent,
                               guidance=guidance, resample=resample if partial else 0)
        samples = {n: self._decode(self.registry[n], latents[n], units.get(n)) for n in generate}
        samples.update({n: known_lib.paste(samples[n], k) for n, k in partial.items()})
        summary = {n: sample_stats(self.registry[n], samples[n], quantiles) for n in generate} if stats else {}
        settings = dict(generate=generate, given=tuple(sorted(conditions)), n_samples=n_samples, steps=steps,
                        sampler=sampler, eta=eta, spacing=spacing, absent=absent, guidance=guidance, units=units,
                        known=tuple(sorted(partial)), resample=resample)
        return Generation(samples, physical, latents, summary, footprints, self.registry, seed, settings,
                          {n: k.mask for n, k in partial.items()})

    def generate_area(self, generate: Sequence[str] | str, conditions: Mapping, **options):
        """``generate`` over the common extent of condition GeoTIFFs of any size: one image per modality.

        Footprint windows overlap (``overlap`` metres, default three quarters of a footprint) and are fused
        at every denoising step (``fusion="step"``), conditioned on their generated neighbours
        (``"neighbours"``) or tiled independently (``"none"``); ``window_batch`` windows go
        through the network at a time. Every other option is ``generate``'s. Returns an
        ``area.AreaGeneration`` (``area.write_area`` writes its GeoTIFFs); ``inference/area.py``
        documents the grid, the windows and the fusions.
        """
        from copgen_jax.inference import area
        return area.generate_area(self, generate, conditions, **options)

    def encode(self, conditions: Mapping, *, seed: int = 0, units: Mapping | None = None) -> dict:
        """Physical-unit inputs (as ``generate`` takes them) -> the scaled latents the backbone sees."""
        _, pixels, _ = self._read_conditions(dict(conditions), dict(units or {}))
        return self._encode(pixels, jax.random.key(seed))

    def network(self) -> nnx.Module:
        """The backbone with the loaded parameters: ``network()(latents, timesteps)``."""
        return nnx.merge(self._graphdef, self._params)

    # -- checks and conditions -----------------------------------------------------------
    def _check_request(self, generate, conditions, n_samples, absent, quantiles):
        known = ", ".join(self.registry.names)
        if not generate:
            raise ModalityError(f"nothing to generate: name at least one of {known}")
        for name in (*generate, *conditions):
            self.registry[name]  # unknown names raise, listing the known ones
        if len(set(generate)) != len(generate):
            raise ModalityError(f"`generate` names a modality twice: {list(generate)}")
        both = sorted(set(generate) & set(conditions))
        if both:
            raise ModalityError(f"{', '.join(both)}: both given as a condition and asked to be generated; "
                                "remove it from one of the two")
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if absent not in ABSENT:
            raise ValueError(f"absent={absent!r}: choose one of {ABSENT}")
        if any(not 0 <= q <= 1 for q in quantiles):
            raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")

    def _read_known(self, known, conditions):
        """``known`` entries -> ``known.Known`` per name (checked, with their own batch size)."""
        both = sorted(set(known) & set(conditions))
        if both:
            raise ModalityError(f"{', '.join(both)}: both given as a condition and as partly known; "
                                "remove it from one of the two")
        return {n: known_lib.read(self.registry[n], v) for n, v in known.items()}

    def _encode_known(self, partial, units, key):
        """Filled known pixels -> (scaled clean latent, latent mask) per name, as conditions are encoded."""
        pixels = {n: self.registry[n].normalize(k.pixels, units.get(n)) for n, k in partial.items()}
        latents = self._encode(pixels, key)
        return {n: (latents[n], known_lib.latent_mask(k.mask, self.registry[n].downsample))
                for n, k in partial.items()}

    def _read_conditions(self, conditions, units, partial=None):
        """-> physical (B, ...) per name, normalised pixels (B, ...), per-input footprints.

        ``partial`` (partly known modalities) shares the batch size and the footprint checks."""
        partial = partial or {}
        physical, rasters = {}, {}
        for name, value in conditions.items():
            m = self.registry[name]
            if not m.is_scalar and (isinstance(value, (str, os.PathLike)) or
                                    (isinstance(value, (list, tuple)) and value
                                     and all(isinstance(v, (str, os.PathLike)) for v in value))):
                paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
                rasters[name] = [geo.read_condition(p, m) for p in paths]
                value = np.stack([r.data for r in rasters[name]])
            physical[name] = _batched(m, m.validate(value, units.get(name)), value)
        sizes = {**{n: len(x) for n, x in physical.items()}, **{n: len(k.pixels) for n, k in partial.items()}}
        rasters.update({n: [k.raster] for n, k in partial.items() if k.raster is not None})
        batch = max(sizes.values(), default=1)
        if any(s not in (1, batch) for s in sizes.values()):
            raise ModalityError(f"conditions carry different batch sizes {sizes}: give each input once per "
                                "example (B), or once (broadcast to all)")
        physical = {n: np.broadcast_to(x, (batch, *x.shape[1:])) if len(x) == 1 else x for n, x in physical.items()}
        pixels = {n: self.registry[n].normalize(x, units.get(n)) for n, x in physical.items()}
        return physical, pixels, _footprints(rasters, batch)

    def _encode(self, pixels, key):
        """Normalised conditions -> scaled latents (B, C, h, w): one sampled posterior draw each."""
        out = {}
        for name, x in pixels.items():
            m = self.registry[name]
            if m.is_scalar:
                z = np.asarray(x, np.float32).reshape(len(x), *m.latent_shape)
            else:
                state, encode, _ = self._tokenizers[name]
                z = np.asarray(encode(state, jnp.asarray(x, jnp.float32),
                                      jax.random.fold_in(key, self.registry.index(name))))
            out[name] = (z * np.float32(m.scale_factor)).astype(np.float32)
        return out

    # -- sampling ---------------------------------------------------------------------
    def _row_sharding(self, ndim):
        with parallel.logical_rules(self.rules):
            return parallel.batch_sharding(self.mesh, ndim)

    def _sample(self, cond, generate, batch, n, key, known=None, **opts):
        """Conditions (B, ...) -> every latent of the sequence as (B, N, ...) numpy arrays.

        ``known``: name -> (clean latent (B, C, h, w), latent mask (B, h, w)), repeated per sample."""
        known = known or {}
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        rows = batch * n
        padded = -(-rows // shards) * shards
        # Row r = b * N + j; padding repeats the last row (valid values, discarded after).
        take = np.minimum(np.arange(padded), rows - 1) // n
        placed = {k: jax.device_put(v[take], self._row_sharding(v.ndim)) for k, v in cond.items()}
        held = {k: tuple(jax.device_put(a[take], self._row_sharding(a.ndim)) for a in v) for k, v in known.items()}
        fn = self._sampler(tuple(generate), tuple(sorted(cond)), padded, tuple(sorted(known)), **opts)
        self._ticks = 0
        jumps = 1 + (opts["resample"] if known else 0)
        self._steps_now = opts["steps"] * jumps * samplers.evaluations_per_step(opts["guidance"], bool(cond))
        with parallel.use_mesh(self.mesh, self.rules):
            out = fn(self._params, key, placed, held)
        return {k: np.asarray(v)[:rows].reshape(batch, n, *v.shape[1:]) for k, v in out.items()}

    def _sampler(self, generate, given, rows, partial, *, steps, sampler, eta, spacing, absent, guidance, resample):
        cache_key = (generate, given, rows, partial, steps, sampler, float(eta), spacing, absent, float(guidance),
                     resample)
        if cache_key in self._samplers:
            return self._samplers[cache_key]
        shapes = {m.name: m.latent_shape for m in self.registry}
        graphdef = self._graphdef

        def run(params, key, cond, known):
            model = nnx.merge(graphdef, params)

            def network(latents, timesteps, present):
                if absent != "mask":  # every modality in the sequence is present: no mask needed
                    return model(latents, timesteps)
                full = {n: latents.get(n, jnp.zeros((rows, *shapes[n]), jnp.float32)) for n in shapes}
                t = {n: timesteps.get(n, jnp.zeros((rows,), jnp.int32)) for n in shapes}
                return model(full, t, present)

            def eps_fn(latents, timesteps, present):
                jax.debug.callback(self._tick, timesteps[generate[0]][0])
                out = network(latents, timesteps, present)
                return {n: self.schedule.eps(out[n], latents[n], timesteps[n]) for n in generate}

            return samplers.sample(eps_fn, self.schedule, key, shapes=shapes, batch=rows, conditions=cond,
                                   generate=generate, absent="noise" if absent == "noise" else "drop",
                                   steps=steps, sampler=sampler, eta=eta, spacing=spacing, guidance=guidance,
                                   known=known, resample=resample)

        row = {n: self._row_sharding(1 + len(shapes[n])) for n in shapes}
        held = {n: (row[n], self._row_sharding(3)) for n in partial}
        fn = jax.jit(run, in_shardings=(None, None, {n: row[n] for n in given}, held),
                     out_shardings={n: row[n] for n in (*generate, *given)})
        self._samplers[cache_key] = fn
        return fn

    def _tick(self, timestep):
        """Host callback once per network evaluation (progress only)."""
        self._ticks += 1
        self._report("sample", min(self._ticks, self._steps_now), self._steps_now)

    def _report(self, stage, done, total):
        if self._progress is not None:
            self._progress(stage, done, total)

    # -- decoding ---------------------------------------------------------------------
    def _decode(self, m: Modality, z, unit):
        """(B, N, *latent_shape) scaled latents -> (B, N, *physical_shape)."""
        b, n = z.shape[:2]
        flat = z.reshape(b * n, *z.shape[2:]) / np.float32(m.scale_factor)
        if m.is_scalar:
            y = flat.reshape(b * n, 3)
        else:
            y = np.concatenate(list(self._decode_chunks(m, flat)))[: b * n]
        x = m.denormalize(y, units=unit)
        if m.kind == CATEGORICAL:
            x = x.astype(np.int64)
        return x.reshape(b, n, *x.shape[1:])

    def _decode_chunks(self, m, flat):
        state, _, decode = self._tokenizers[m.name]
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        chunk = -(-min(self.decode_batch, len(flat)) // shards) * shards
        sharding = self._row_sharding(flat.ndim)
        for i, start in enumerate(range(0, len(flat), chunk)):
            part = flat[start:start + chunk]
            part = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), 0)]) if len(part) < chunk else part
            self._report(f"decode {m.name}", min(start + chunk, len(flat)), len(flat))
            yield np.asarray(decode(state, jax.device_put(part, sharding)))


def _batched(m: Modality, x, original):
    """Add the batch axis to one input; refuse extra axes."""
    extra = np.ndim(x) - len(m.physical_shape)
    if extra == 0:
        x = x[None]
    elif extra != 1:
        raise ModalityError(f"{m.name}: condition has shape {np.shape(original)}, expected "
                            f"{m.physical_shape} or (B, {', '.join(map(str, m.physical_shape))})".replace(", )", ")"))
    if m.kind == CATEGORICAL:
        x = x.astype(np.int64)
    return x


def _footprints(rasters, batch):
    """Per input, the one footprint all its GeoTIFF conditions share (None without rasters)."""
    out = [None] * batch
    first = [None] * batch
    for name, items in rasters.items():
        for i in range(batch):
            r = items[i if len(items) > 1 else 0]
            fp = r.footprint
            if fp is None:
                continue
            if out[i] is None:
                out[i], first[i] = fp, r.path
            elif not out[i].matches(fp):
                raise ModalityError(f"{r.path} and {first[i]} cover different footprints (corners "
                                    f"{fp.corner} vs {out[i].corner}, CRS {fp.crs} vs {out[i].crs}); "
                                    "conditions of one example must cover the same ground")
    return out
