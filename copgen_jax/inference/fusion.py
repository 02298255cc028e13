"""How overlapping footprint windows are sampled together (``inference/area.py`` lays them out).

* ``step_fused``: the sampler runs on the area's latent canvas; at every step each window sees
  its slice, the network's ε predictions are averaged where windows overlap (weighted by a
  tent, highest at a window's centre: ``window_weights``), and the solver updates the canvas.
* ``neighbour_conditioned``: windows in ``waves`` that do not overlap; each wave is sampled
  holding, as known latents, what earlier waves left in its overlaps.

Both take the windows' encoded conditions and return the latent canvas per generated modality;
known latents (``held``, gap filling over an area) are held by the sampler in both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from copgen_jax import parallel
from copgen_jax.diffusion import samplers


def chunks(n: int, size: int):
    return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]


def tent(size: int) -> np.ndarray:
    """Separable blending weights, highest at a window's centre, small but non-zero at its edges."""
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / (size / 2)
    return np.outer(ramp, ramp)


def step_fused(model, generate, cond, layout, grid, n, batch, key, opts, progress, held=None, resample=0,
           weights="tent") -> dict:
    """The sampler on the area's latent canvas, ε averaged over overlapping windows at every step."""
    reg = model.registry
    shards = model.mesh.shape["data"] * model.mesh.shape["fsdp"]
    wb = min(batch, len(layout.offsets))
    while (wb * n) % shards:
        wb += 1
    wins = len(layout.offsets)
    nb = -(-wins // wb)
    take = np.minimum(np.arange(nb * wb), wins - 1)
    weight = (np.arange(nb * wb) < wins).astype(np.float32).reshape(nb, wb)  # padded windows add nothing
    offs = {g: layout.pixels(reg[g].gsd * reg[g].downsample)[take].reshape(nb, wb, 2) for g in generate}
    cond_b = {k: v[take].reshape(nb, wb, *v.shape[1:]) for k, v in cond.items()}
    canvas = {g: (reg[g].latent_shape[0], *grid.shape_for(reg[g].gsd * reg[g].downsample)) for g in generate}
    tents = {g: window_weights(reg[g].latent_shape[1], weights) for g in generate}
    count = {g: coverage(offs[g].reshape(-1, 2)[:wins], tents[g], canvas[g][1:]) for g in generate}
    held = {g: (np.broadcast_to(z0, (n, *z0.shape)), np.broadcast_to(mask, (n, *mask.shape)))
            for g, (z0, mask) in (held or {}).items()}
    run = _sampler(model, tuple(generate), tuple(sorted(cond)), n, wb, nb, canvas, opts, progress,
                         tuple(sorted(held)), resample)
    with parallel.use_mesh(model.mesh, model.rules):
        out = run(model._params, key, cond_b, offs, jnp.asarray(weight), count, held, tents)
    return {g: np.asarray(out[g]) for g in generate}


def window_weights(size: int, weights: str) -> np.ndarray:
    return (tent(size) if weights == "tent" else np.ones((size, size))).astype(np.float32)


def coverage(offsets, window, shape) -> np.ndarray:
    """The sum of the windows' weights (``window``: (h, w), or a side for weights of 1) over the canvas."""
    window = np.ones((window, window), np.float32) if np.isscalar(window) else window
    c = np.zeros(shape, np.float32)
    for r, q in offsets:
        c[r:r + window.shape[0], q:q + window.shape[1]] += window
    return c


def _sampler(model, generate, given, n, wb, nb, canvas, opts, progress, partial=(), resample=0):
    reg, schedule, graphdef = model.registry, model.schedule, model._graphdef
    absent, guidance = opts["absent"], opts["guidance"]
    noise_names = tuple(m.name for m in reg if m.name not in (*generate, *given)) if absent == "noise" else ()
    rows = wb * n
    ticks = {"done": 0}
    total = opts["steps"] * (1 + (resample if partial else 0)) * nb * samplers.evaluations_per_step(
        guidance, bool(given))

    def tick(_):
        ticks["done"] += 1
        if progress is not None:
            progress("windows x steps", min(ticks["done"], total), total)

    def place(x):
        return jax.lax.with_sharding_constraint(x, model._row_sharding(x.ndim))

    def run(params, key, cond_b, offs, weight, count, known, tents):
        net = nnx.merge(graphdef, params)

        def window_eps(latents, t, b, with_conditions):
            lat, tim = {}, {}
            for g in generate:
                c, h, w = reg[g].latent_shape
                cut = jax.vmap(lambda o, g=g: jax.lax.dynamic_slice(latents[g], (0, 0, o[0], o[1]), (n, c, h, w)))
                lat[g] = place(cut(offs[g][b]).reshape(rows, c, h, w))
                tim[g] = jnp.full((rows,), t, jnp.int32)
            if with_conditions:
                for k in given:
                    lat[k] = place(jnp.repeat(cond_b[k][b], n, axis=0))
                    tim[k] = jnp.zeros((rows,), jnp.int32)
            hidden = noise_names + (() if with_conditions or absent != "noise" else given)
            keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, t), b), max(len(hidden), 1))
            for k, name in zip(keys, hidden):
                lat[name] = jax.random.normal(k, (rows, *reg[name].latent_shape), jnp.float32)
                tim[name] = jnp.full((rows,), schedule.num_steps, jnp.int32)
            jax.debug.callback(tick, b)
            out = net(lat, tim)
            return {g: schedule.eps(out[g], lat[g], tim[g]).reshape(wb, n, *reg[g].latent_shape) for g in generate}

        def eps_fn(latents, timesteps, present):
            t = timesteps[generate[0]][0]

            def body(b, acc):
                eps = window_eps(latents, t, b, True)
                if guidance != 1 and given:
                    free = window_eps(latents, t, b, False)
                    eps = {g: free[g] + guidance * (eps[g] - free[g]) for g in generate}
                for g in generate:
                    c, h, w = reg[g].latent_shape
                    for i in range(wb):
                        start = (0, 0, offs[g][b, i, 0], offs[g][b, i, 1])
                        patch = jax.lax.dynamic_slice(acc[g], start, (n, c, h, w)) + weight[b, i] * tents[g] * eps[g][i]
                        acc[g] = jax.lax.dynamic_update_slice(acc[g], patch, start)
                return acc

            acc = jax.lax.fori_loop(0, nb, body, {g: jnp.zeros((n, *canvas[g]), jnp.float32) for g in generate})
            return {g: acc[g] / count[g] for g in generate}

        return samplers.sample(eps_fn, schedule, key, shapes=canvas, batch=n, conditions={}, generate=generate,
                               absent="drop", steps=opts["steps"], sampler=opts["sampler"], eta=opts["eta"],
                               spacing=opts["spacing"], guidance=1.0, known=known,
                               resample=resample if partial else 0)

    return jax.jit(run)


def waves(layout) -> list[list[int]]:
    """Window indices in raster order, each put in the first wave none of whose windows it overlaps."""
    out: list[list[int]] = []
    for i, (r, c) in enumerate(layout.offsets):
        apart = lambda j: max(abs(r - layout.offsets[j][0]), abs(c - layout.offsets[j][1])) >= layout.side - 1e-6  # noqa: E731
        wave = next((w for w in out if all(apart(j) for j in w)), None)
        if wave is None:
            out.append([i])
        else:
            wave.append(i)
    return out


def neighbour_conditioned(model, generate, cond, layout, grid, n, batch, key, opts, progress, held=None, resample=0,
                weights=None) -> dict:
    """Waves of windows, each sampled holding the latents earlier waves left in its overlaps.

    Every sample has its own canvas, so a (window, sample) pair is one row of the sampler, and
    its known part is that sample's canvas: the samples stay independent draws of the area.
    Known latents (``held``) start on every canvas, as if generated by a wave before the first.
    ``weights`` is step fusion's: here no two predictions are averaged.
    """
    reg, held = model.registry, held or {}
    shapes = {g: (reg[g].latent_shape[0], *grid.shape_for(reg[g].gsd * reg[g].downsample)) for g in generate}
    canvas = {g: np.broadcast_to(held[g][0], (n, *shapes[g])).copy() if g in held
              else np.zeros((n, *shapes[g]), np.float32) for g in generate}
    filled = {g: held[g][1].copy() if g in held else np.zeros(shapes[g][1:], bool) for g in generate}
    offs = {g: layout.pixels(reg[g].gsd * reg[g].downsample) for g in generate}
    todo = waves(layout)
    batches = [idx for wave in todo for idx in chunks(len(wave), max(1, batch))]
    done = 0
    for w, wave in enumerate(todo):
        # A window that earlier waves (or the known pixels) already cover has nothing left to generate.
        wave = np.asarray([i for i in wave if not all(
            filled[g][r:r + reg[g].latent_shape[1], q:q + reg[g].latent_shape[1]].all()
            for g in generate for r, q in [offs[g][i]])], np.int64)
        for c, part in enumerate(chunks(len(wave), max(1, batch))):
            wins = wave[part]
            # Every call has ``batch`` windows (the last of a wave repeated), so the sampler compiles once.
            padded = wins[np.minimum(np.arange(max(1, batch)), len(wins) - 1)]
            rows = np.repeat(padded, n)  # row = window * n + sample
            sample_of = np.tile(np.arange(n), len(padded))
            known = {}
            for g in generate:
                h = reg[g].latent_shape[1]
                z0 = np.stack([canvas[g][j, :, r:r + h, q:q + h] for (r, q), j in zip(offs[g][rows], sample_of)])
                mask = np.stack([filled[g][r:r + h, q:q + h] for r, q in offs[g][rows]])
                if mask.any():
                    known[g] = (z0, mask)
            out = model._sample({k: v[rows] for k, v in cond.items()}, generate, len(rows), 1,
                                jax.random.fold_in(jax.random.fold_in(key, w), c), known=known,
                                resample=resample if known else 0, **opts)
            for g in generate:
                h = reg[g].latent_shape[1]
                real = slice(0, len(wins) * n)
                for (r, q), j, z in zip(offs[g][rows[real]], sample_of[real], out[g][real, 0]):
                    canvas[g][j, :, r:r + h, q:q + h] = z  # the known part comes back as it was
                for r, q in offs[g][wins]:
                    filled[g][r:r + h, q:q + h] = True
            done += 1
            if progress is not None:
                progress("window batches", done, len(batches))
    if progress is not None:  # covered windows were skipped: the bar ends at its total
        progress("window batches", len(batches), len(batches))
    return canvas
