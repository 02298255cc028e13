"""Any-to-any samplers on the discrete schedule (SPEC §5): DDIM, DPM-Solver++(2M) and its SDE variant.

``SAMPLERS``: "ddim" (Song et al. 2021; ``eta`` > 0 adds fresh noise at every step),
"dpm++" (DPM-Solver++(2M), Lu et al. 2022: deterministic, second-order multistep) and
"dpm++sde" (DPM-Solver++(2M) SDE, ibid.: the same multistep data prediction, but a step of
the reverse SDE, with fresh noise at every step; ``dpmpp_2m_sde_update``).

Generated modalities share one timestep per step; conditions are held clean at
timestep 0 at every step and returned bit-identical. The whole loop is one
``jax.lax.scan``, so ``sample`` jits as a unit once the denoiser and the static
arguments are closed over::

    run = jax.jit(functools.partial(sample, eps_fn, schedule, shapes=shapes, batch=8,
                                    generate=("s2l2a",), absent="drop", steps=50, sampler="ddim"))
    out = run(rng, conditions=conditions)

Timestep grid: the S network evaluations sit at integers evenly spaced from N
down to 1, both ends included, ``n_k = round(N - k (N - 1) / (S - 1))`` (just N
when S = 1), and the final update goes to n = 0. This is DPM-Solver's
"time_uniform" grid on the discrete schedule (t from 1 to t_eps = 1/N, as in
the reference release) and DDIM's uniform ("leading") spacing, except that it
starts at N rather than N - N/S + 1, so the first evaluation is where the
N(0, 1) initial state is closest to the true marginal. Ending the evaluations
at n = 1 (sigma = 0.029) matters: the last update to alpha_bar = 1 returns the
x0 prediction of the last evaluation (every sampler), a posterior mean that
shrinks any data variance below sigma^2 of that evaluation; a grid whose last
evaluation sits at N/S instead (the "trailing" spacing) loses a visible part
of the fine-scale variance.

``spacing="logsnr"`` instead spaces the evaluations evenly in λ = log(α/σ),
rounded to integer timesteps. Uniform is the default. On the SD schedule it
leaves one big λ step at the low-noise end, which costs DPM-Solver++ much of
its second-order advantage: against the exact probability-flow map of
Gaussian data (tests/diffusion/test_samplers.py), RMS error / data std at 20 steps is
0.016 (std 1) and 0.070 (std 0.5) on the uniform grid and 0.006 and 0.004 on
the logsnr grid, against 0.028 and 0.052 for DDIM at 50 uniform steps (DDIM
itself gains nothing from logsnr spacing).

Update rules are plain functions of (x, eps or x0, alpha_bar_t, alpha_bar_s, ...)
mapped over dicts with ``jax.tree.map``, so other loops can reuse them.

"dpm++sde" takes DPM-Solver++(2M)'s steps (the same grid, first order on the same steps) with
the update of the reverse SDE instead of the probability-flow ODE, and fresh noise at every
step. It does not follow the flow map (a key gives its own draw, not the ODE's image of the
initial noise), so its accuracy shows in the law of its samples: against Gaussian data with
the exact ε (tests/diffusion/test_samplers.py), sample variance / data variance is 1.03 (std 1)
and 1.02 (std 0.5) at 20 logsnr steps, 1.005 and 1.00 at 50. The uniform grid's one big λ step
at the low-noise end under-disperses it, as coarse steps do DDIM with η = 1: 0.98 and 0.84 at
20 uniform steps, 1.00 and 0.96 at 50; the inference API (``choices.default_spacing``) takes the
logsnr grid for it, as for "dpm++". Its second-order step is the "midpoint" form,
D = x0 + (x0 - x0_prev)/(2r), k-diffusion's default; the "heun" form (x0 - x0_prev weighted by
α_s (1 - (1 - e^{-2h})/(2h))/r instead of α_s (1 - e^{-2h})/(2r)) measured 1.08 and 1.07 at 20 logsnr
steps. ``eta`` scales its noise as in k-diffusion's ``sample_dpmpp_2m_sde``: 1 (its default)
is the SDE, 0 is the "dpm++" update, values between interpolate.

Region conditioning (``known``): a generated modality may be partly known, as a clean latent
z0 and a mask of known latent pixels. RePaint-style (Lugmayr et al. 2022), after every update
to timestep s the known positions are replaced by z0 noised to s,
sqrt(ab_s) z0 + sqrt(1 - ab_s) ε with fresh ε, so the model always sees the known part at
the noise level of the rest; the step to n = 0 sets them to z0 exactly. ``resample = r``
adds RePaint's jumps: r times per step, the pasted x_s is noised back to t and the step redone,
which lets the unknown part catch up with the known part at a cost of r extra evaluations.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The names (and SAMPLERS' defaults) live in a JAX-free module for the command lines' flags.
from copgen_jax.diffusion.choices import ABSENT_MODES, SAMPLERS, SPACINGS, default_eta
from copgen_jax.diffusion.schedule import Schedule

EpsFn = Callable[[dict, dict, "dict | None"], dict]


# -- timestep grids ---------------------------------------------------------------
def log_snr(schedule: Schedule) -> np.ndarray:
    """λ_n = log(α_n/σ_n) for n = 1..N (index n - 1), decreasing in n."""
    ab = schedule.alpha_bars[1:]
    return 0.5 * (np.log(ab) - np.log1p(-ab))


def timestep_grid(schedule: Schedule, steps: int, spacing: str = "uniform") -> np.ndarray:
    """``steps + 1`` strictly decreasing int32 timesteps: ``steps`` evaluations from N to 1, then 0.

    "uniform": evenly spaced in n. "logsnr": evenly spaced in λ, rounded to the
    nearest integer timestep (crowded ends are pushed apart to stay strictly
    decreasing).
    """
    n = schedule.num_steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= n:
        raise ValueError(f"steps must be an integer in [1, {n}] (the schedule's N), got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}: choose one of {SPACINGS}")
    if steps == 1:
        return np.array([n, 0], np.int32)
    if spacing == "uniform":
        evals = np.round(np.linspace(n, 1, steps))
    else:
        lam = log_snr(schedule)
        targets = np.linspace(lam[-1], lam[0], steps)
        evals = np.argmin(np.abs(lam[None, :] - targets[:, None]), axis=1) + 1.0
    k = np.arange(steps)
    evals = np.clip(evals, steps - k, n - k)  # leave room for the other evaluations on both sides
    # Strictly decreasing n  <=>  n_k + k non-increasing: a reverse running max fixes ties.
    evals = np.maximum.accumulate((evals + k)[::-1])[::-1] - k
    return np.append(evals, 0).astype(np.int32)


def grid_alpha_bars(schedule: Schedule, grid: np.ndarray) -> np.ndarray:
    """alpha_bar at each grid timestep (float64; alpha_bar[0] = 1)."""
    return schedule.alpha_bars[grid]


# -- update rules (pure, dict-valued via jax.tree.map) ------------------------------
def x0_from_eps(x, eps, alpha_bar):
    """Data prediction from an ε-prediction: x0 = (x - sqrt(1 - ab) ε) / sqrt(ab)."""
    a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    return jax.tree.map(lambda xi, ei: (xi - s * ei) / a, x, eps)


def ddim_sigma(alpha_bar_t, alpha_bar_s, eta):
    """DDIM's σ_{t→s} = η sqrt((1 - ab_s)/(1 - ab_t)) sqrt(1 - ab_t/ab_s); 0 when s is clean."""
    return eta * jnp.sqrt((1.0 - alpha_bar_s) / (1.0 - alpha_bar_t)) * jnp.sqrt(1.0 - alpha_bar_t / alpha_bar_s)


def ddim_update(x, eps, alpha_bar_t, alpha_bar_s, eta=0.0, noise=None):
    """One DDIM step t → s (Song et al. 2021, eq. 12).

    x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - σ²) ε + σ z, with x0 from ``x0_from_eps``.
    ``noise`` (same structure as ``x``) is required when η may be non-zero.
    """
    x0 = x0_from_eps(x, eps, alpha_bar_t)
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_s, eta)
    a_s, d_s = jnp.sqrt(alpha_bar_s), jnp.sqrt(jnp.maximum(1.0 - alpha_bar_s - sigma ** 2, 0.0))
    x_s = jax.tree.map(lambda x0i, ei: a_s * x0i + d_s * ei, x0, eps)
    if noise is not None:
        x_s = jax.tree.map(lambda xi, zi: xi + sigma * zi, x_s, noise)
    return x_s


def dpmpp_2m_update(x, x0, x0_prev, alpha_bar_t, alpha_bar_s, alpha_bar_prev, second_order):
    """One DPM-Solver++(2M) step t → s in data-prediction form (Lu et al. 2022, Alg. 2).

    With α = sqrt(ab), σ = sqrt(1 - ab), λ = log(α/σ) and h = λ_s - λ_t:
        x_s = (σ_s/σ_t) x + α_s (1 - e^{-h}) D,
        D = x0                                        (first order),
        D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev,  r = h_prev/h   (second order),
    where h_prev = λ_t - λ_prev is the previous step's size. ``second_order`` is a
    (traced) bool; the first step and the step to clean data (ab_s = 1, λ_s = ∞)
    must be first order, and the latter then returns exactly x0.
    """
    a_t, s_t = jnp.sqrt(alpha_bar_t), jnp.sqrt(1.0 - alpha_bar_t)
    a_s, s_s = jnp.sqrt(alpha_bar_s), jnp.sqrt(1.0 - alpha_bar_s)
    # e^{-h} = (σ_s α_t) / (α_s σ_t): finite (0) even when s is clean.
    exp_neg_h = (s_s * a_t) / (a_s * s_t)
    lam = lambda ab: 0.5 * (jnp.log(ab) - jnp.log1p(-ab))
    h = lam(alpha_bar_s) - lam(alpha_bar_t)
    h_prev = lam(alpha_bar_t) - lam(alpha_bar_prev)
    # 1/(2r); the inner guard avoids h/0 on the first step (h_prev = 0); where() drops h = ∞ at the last.
    w = jnp.where(second_order, h / (2.0 * jnp.where(second_order, h_prev, 1.0)), 0.0)
    return jax.tree.map(lambda xi, d0, d1: (s_s / s_t) * xi + a_s * (1.0 - exp_neg_h) * ((1.0 + w) * d0 - w * d1),
                        x, x0, x0_prev)


def dpmpp_2m_sde_update(x, x0, x0_prev, alpha_bar_t, alpha_bar_s, alpha_bar_prev, second_order, noise=None,
                        eta=1.0):
    """One DPM-Solver++(2M) SDE step t → s in data-prediction form (Lu et al. 2022, the SDE solver).

    With α, σ, λ, h and r as in ``dpmpp_2m_update``:
        x_s = (σ_s/σ_t) e^{-ηh} x + α_s (1 - e^{-(1+η)h}) D + σ_s sqrt(1 - e^{-2ηh}) z,
        D = x0                                   (first order),
        D = x0 + (x0 - x0_prev)/(2r)             (second order, the "midpoint" form),
    z ~ N(0, 1) given as ``noise`` (same structure as ``x``; None: no noise term, right only
    for η = 0). η = 1 is the SDE (the paper's solver, and k-diffusion's ``sample_dpmpp_2m_sde``
    with solver_type="midpoint", η and s_noise = 1, rewritten from its σ/α parametrisation);
    η = 0 is ``dpmpp_2m_update``'s formula. At η = 1 a first-order step is DDIM's η = 1 step
    (DDPM's ancestral step). The step to clean data (ab_s = 1: σ_s = 0, e^{-h} = 0) must be
    first order, and then returns exactly x0, with no noise.
    """
    a_t, s_t = jnp.sqrt(alpha_bar_t), jnp.sqrt(1.0 - alpha_bar_t)
    a_s, s_s = jnp.sqrt(alpha_bar_s), jnp.sqrt(1.0 - alpha_bar_s)
    exp_neg_h = (s_s * a_t) / (a_s * s_t)  # e^{-h}: 0 (not a NaN) when s is clean
    exp_neg_eta_h = exp_neg_h ** eta  # e^{-ηh}, as a power so that h = ∞ stays finite
    lam = lambda ab: 0.5 * (jnp.log(ab) - jnp.log1p(-ab))
    h = lam(alpha_bar_s) - lam(alpha_bar_t)
    h_prev = lam(alpha_bar_t) - lam(alpha_bar_prev)
    w = jnp.where(second_order, h / (2.0 * jnp.where(second_order, h_prev, 1.0)), 0.0)  # 1/(2r), as in 2M
    keep = (s_s / s_t) * exp_neg_eta_h
    data = a_s * (1.0 - exp_neg_h * exp_neg_eta_h)
    x_s = jax.tree.map(lambda xi, d0, d1: keep * xi + data * (d0 + w * (d0 - d1)), x, x0, x0_prev)
    if noise is not None:
        spread = s_s * jnp.sqrt(jnp.maximum(1.0 - exp_neg_eta_h ** 2, 0.0))
        x_s = jax.tree.map(lambda xi, zi: xi + spread * zi, x_s, noise)
    return x_s


def renoise(x0, alpha_bar, noise):
    """x0 noised to alpha_bar: sqrt(ab) x0 + sqrt(1 - ab) ε (exactly x0 when ab = 1)."""
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def noise_back(x_s, alpha_bar_s, alpha_bar_t, noise):
    """One forward jump s -> t (t noisier): sqrt(ab_t/ab_s) x_s + sqrt(1 - ab_t/ab_s) ε."""
    return renoise(x_s, alpha_bar_t / alpha_bar_s, noise)


# -- validation -------------------------------------------------------------------
def _check_known(shapes, batch, generate, known, resample):
    if isinstance(resample, bool) or not isinstance(resample, (int, np.integer)) or resample < 0:
        raise ValueError(f"resample must be an integer >= 0 (0: no RePaint jumps), got {resample!r}")
    for name, (z0, mask) in known.items():
        if name not in generate:
            raise ValueError(f"known {name!r} is not generated: add it to `generate` (its known part is kept)")
        c, h, w = shapes[name]
        if tuple(z0.shape) != (batch, c, h, w):
            raise ValueError(f"known {name!r}: latent has shape {tuple(z0.shape)}, expected (batch, C, H, W) = "
                             f"{(batch, c, h, w)}")
        if tuple(mask.shape) != (batch, h, w):
            raise ValueError(f"known {name!r}: latent mask has shape {tuple(mask.shape)}, expected "
                             f"(batch, H, W) = {(batch, h, w)}")


def _check_request(shapes, batch, conditions, generate, absent, sampler, eta, guidance=1.0):
    known = list(shapes)
    if isinstance(guidance, bool) or not (isinstance(guidance, (int, float, np.number)) and 0 <= guidance < np.inf):
        raise ValueError(f"guidance must be a finite number >= 0 (1: plain conditional sampling), got {guidance!r}")
    for name in list(generate) + list(conditions):
        if name not in shapes:
            raise ValueError(f"unknown modality {name!r}: the model has {known}")
    both = sorted(set(generate) & set(conditions))
    if both:
        raise ValueError(f"modalities {both} are both given as conditions and asked to be generated; "
                         "remove them from one of the two")
    if not generate:
        raise ValueError(f"nothing to generate: name at least one of {known} in `generate`")
    if len(set(generate)) != len(generate):
        raise ValueError(f"`generate` names a modality twice: {list(generate)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {SAMPLERS}")
    if isinstance(eta, (int, float)) and eta < 0:
        raise ValueError(f"eta must be >= 0 (0: deterministic DDIM or DPM-Solver++, 1: DDIM ancestral or the "
                         f"DPM-Solver++ SDE), got {eta}")
    if absent not in ABSENT_MODES:
        raise ValueError(f"unknown absent mode {absent!r}: choose one of {ABSENT_MODES}")
    for name, c in conditions.items():
        want = (batch, *shapes[name])
        if tuple(c.shape) != want:
            raise ValueError(f"condition {name!r} has shape {tuple(c.shape)}, expected (batch, C, H, W) = {want}")


def evaluations_per_step(guidance: float, conditioned: bool) -> int:
    """Network evaluations per sampler step: guidance adds an unconditional one, when there are conditions."""
    return 2 if guidance != 1 and conditioned else 1


# -- the sampling loop ---------------------------------------------------------------
def sample(eps_fn: EpsFn, schedule: Schedule, rng, *, shapes: Mapping[str, tuple], batch: int,
           conditions: Mapping[str, jax.Array], generate: Sequence[str], absent: str = "drop",
           steps: int = 50, sampler: str = "ddim", eta: float | None = None, spacing: str = "uniform",
           guidance: float = 1.0, known: Mapping[str, tuple] | None = None, resample: int = 0) -> dict:
    """Generate ``generate`` given clean ``conditions``; returns generated latents and the conditions.

    Args:
      eps_fn: ``(latents, timesteps, present) -> ε`` for every modality in ``latents``
        (dicts of (B, C, H, W) float32, (B,) int32, (B,) bool).
      schedule: the discrete schedule the model was trained on.
      rng: PRNG key: initial noise, noise for absent modalities and each step's noise (DDIM
        with η > 0, dpm++sde).
      shapes: every modality of the model -> its latent (C, H, W).
      batch: B.
      conditions: name -> (B, C, H, W) clean latents; fed at timestep 0 at every step
        and returned bit-identical.
      generate: names to generate; they share one timestep per step.
      absent: what to do with modalities neither given nor generated.
        "drop": leave them out of ``latents`` (the backbone drops their tokens) and mark
        them False in ``present``; right for a model trained with presence masks.
        "noise": feed fresh N(0, 1) noise at timestep N at every step. A fully noised
        input at N is exactly what such a model saw in training for a modality whose
        timestep was N, i.e. one carrying (almost) no information, so this marginalises
        it. The reference release feeds the noise at timestep 0 instead, which tells the
        model "this noise is clean data": an input it never saw in training, which
        biases the generated modalities.
      steps: number of network evaluations.
      sampler: one of ``SAMPLERS``: "ddim", "dpm++" (DPM-Solver++(2M); first order on the
        first step, on the step into the last evaluation and on the final step to clean data)
        or "dpm++sde" (its SDE variant, first order on the same steps; ``dpmpp_2m_sde_update``).
      eta: the noise each step adds. "ddim": 0 (the default) is deterministic, 1 is DDPM-like
        ancestral sampling. "dpm++sde": 1 (the default) is the SDE, 0 is "dpm++". None: the
        sampler's default. Ignored by "dpm++".
      spacing: timestep grid, "uniform" or "logsnr" (see ``timestep_grid``).
      guidance: classifier-free guidance weight w: ε = ε_uncond + w (ε_cond - ε_uncond), where
        ε_uncond sees no condition (treated like an absent modality: dropped, or noise at N).
        1 is plain conditional sampling (one evaluation per step); w > 1 follows the conditions
        more closely than the model's conditional alone, at the cost of a second evaluation.
      known: generated name -> (z0 (B, C, H, W) clean latent, mask (B, H, W) bool, True = known):
        the known latent pixels, held on z0 noised to each step's timestep and returned as z0
        exactly (module doc). Rows and positions with a False mask are generated as usual.
      resample: RePaint jumps per step (only with ``known``): each costs one more step's evaluations.

    Returns:
      {name: (B, C, H, W) float32} for generated modalities, the x0 prediction of the
      last step (z0 at known positions), plus every condition exactly as given.
    """
    generate = tuple(generate)
    conditions = dict(conditions)
    known = dict(known or {})
    _check_request(shapes, batch, conditions, generate, absent, sampler, eta, guidance)
    _check_known(shapes, batch, generate, known, resample)
    resample = int(resample) if known else 0  # without a known part a jump only adds noise
    grid = timestep_grid(schedule, steps, spacing)
    missing = tuple(n for n in shapes if n not in conditions and n not in generate)
    noise_names = missing if absent == "noise" else ()
    eta = default_eta(sampler) if eta is None else eta
    stochastic = sampler in ("ddim", "dpm++sde") and not (isinstance(eta, (int, float)) and eta == 0)

    cond = {n: jnp.asarray(c, jnp.float32) for n, c in conditions.items()}
    ones = jnp.ones((batch,), bool)
    present = {n: ones for n in (*cond, *generate, *noise_names)}
    present.update({n: jnp.zeros((batch,), bool) for n in missing if n not in noise_names})
    fixed_t = {**{n: jnp.zeros((batch,), jnp.int32) for n in cond},
               **{n: jnp.full((batch,), schedule.num_steps, jnp.int32) for n in noise_names}}

    def normal(key, names):
        keys = jax.random.split(key, max(len(names), 1))
        return {n: jax.random.normal(k, (batch, *shapes[n]), jnp.float32) for n, k in zip(names, keys)}

    def eps_at(x, n_t, key):
        latents = {**cond, **normal(key, noise_names), **x}
        timesteps = {**fixed_t, **{n: jnp.full((batch,), n_t, jnp.int32) for n in generate}}
        eps = {n: v.astype(jnp.float32) for n, v in eps_fn(latents, timesteps, present).items() if n in generate}
        if evaluations_per_step(guidance, bool(cond)) == 1:
            return eps
        free = unconditioned(latents, timesteps, jax.random.fold_in(key, 1))
        uncond = {n: v.astype(jnp.float32) for n, v in eps_fn(*free).items() if n in generate}
        return {n: uncond[n] + guidance * (eps[n] - uncond[n]) for n in generate}

    def unconditioned(latents, timesteps, key):
        """The conditions made absent, the way ``absent`` treats modalities nobody named."""
        if absent == "noise":
            return ({**latents, **normal(key, tuple(cond))},
                    {**timesteps, **{n: jnp.full((batch,), schedule.num_steps, jnp.int32) for n in cond}}, present)
        keep = [n for n in latents if n not in cond]
        return ({n: latents[n] for n in keep}, {n: timesteps[n] for n in keep},
                {**present, **{n: jnp.zeros((batch,), bool) for n in cond}})

    ab = jnp.asarray(grid_alpha_bars(schedule, grid), jnp.float32)
    idx = np.arange(steps)
    xs = {"n_t": jnp.asarray(grid[:-1]), "ab_t": ab[:-1], "ab_s": ab[1:],
          "ab_prev": ab[np.maximum(idx - 1, 0)],
          # 2M needs a previous x0 (not on the first step) and a finite step (not on the step
          # to 0). The step into the last evaluation (n = 1) is first order too: on the uniform
          # grid it is the largest step in λ by far, and 2M's extrapolation there (r ≈ 0.2)
          # overshoots the variance; this is DPM-Solver's lower-order final step.
          "second": jnp.asarray((idx > 0) & (idx < steps - 2)),
          "key": jax.random.split(jax.random.fold_in(rng, 1), steps)}

    # Known positions, broadcast over channels: (B, 1, H, W).
    held = {n: (jnp.asarray(z0, jnp.float32), jnp.asarray(mask, bool)[:, None]) for n, (z0, mask) in known.items()}

    def paste(x, alpha_bar, key):
        """The known latent pixels replaced by z0 noised to ``alpha_bar`` (fresh ε from ``key``)."""
        if not held:
            return x
        eps = normal(key, tuple(held))
        return {**x, **{n: jnp.where(m, renoise(z0, alpha_bar, eps[n]), x[n]) for n, (z0, m) in held.items()}}

    def update(x, x0_prev, s, key):
        """One step t -> s from x_t, the known part pasted at s; -> (x_s, this step's x0)."""
        k_absent, k_step = jax.random.split(key)
        eps = eps_at(x, s["n_t"], k_absent)
        if sampler == "ddim":
            noise = normal(k_step, generate) if stochastic else None
            x_s, x0 = ddim_update(x, eps, s["ab_t"], s["ab_s"], eta, noise), x0_prev
        elif sampler == "dpm++":
            x0 = x0_from_eps(x, eps, s["ab_t"])
            x_s = dpmpp_2m_update(x, x0, x0_prev, s["ab_t"], s["ab_s"], s["ab_prev"], s["second"])
        else:  # dpm++sde: fresh noise from the key DDIM's noise comes from (dpm++ draws none)
            x0 = x0_from_eps(x, eps, s["ab_t"])
            noise = normal(k_step, generate) if stochastic else None
            x_s = dpmpp_2m_sde_update(x, x0, x0_prev, s["ab_t"], s["ab_s"], s["ab_prev"], s["second"], noise, eta)
        # fold_in, not split: the keys above stay what they were before region conditioning existed.
        return paste(x_s, s["ab_s"], jax.random.fold_in(key, 2)), x0

    def jump(j, carry, x0_prev, s):
        """RePaint's jump: x_s noised back to t, then the step redone (the multistep history kept)."""
        key = jax.random.fold_in(s["key"], 3 + j)
        x_t = {n: noise_back(v, s["ab_s"], s["ab_t"], e)
               for (n, v), e in zip(carry[0].items(), normal(key, tuple(carry[0])).values())}
        return update(x_t, x0_prev, s, jax.random.fold_in(key, 1))

    def body(carry, s):
        x, x0_prev = carry
        out = update(x, x0_prev, s, s["key"])
        if resample:
            out = jax.lax.fori_loop(0, resample, lambda j, c: jump(j, c, x0_prev, s), out)
        return out, None

    x_init = normal(jax.random.fold_in(rng, 0), generate)
    x_init = paste(x_init, ab[0], jax.random.fold_in(rng, 2))
    (x, _), _ = jax.lax.scan(body, (x_init, x_init), xs)
    # Exact, not z0 times sqrt(1) plus 0 times ε: a NaN-free z0 comes back bit for bit.
    x = {**x, **{n: jnp.where(m, z0, x[n]) for n, (z0, m) in held.items()}}
    return {**x, **conditions}
