"""Samplers against exact answers: Gaussian data, whose ε-prediction is known in closed form.

Data per dimension: A ~ N(MU_A, 1), B = SLOPE·A + OFFSET + NOISE·ζ. For any subset
of modalities at any timesteps, (x_t) is jointly Gaussian, so E[ε | x_t] is a
linear solve; feeding that as ``eps_fn`` tests the samplers, not a network.

Note on the reference values: alpha_bar_N = 0.0047 on the SD schedule, so the
N(0, 1) initial state is not exactly the law of x_N; the exact flow from it
shifts means by about sqrt(alpha_bar_N)·μ ≈ 0.07·μ. Means are kept small so
this stays well inside the tolerances (and ``test_solver_accuracy`` compares to
the exact flow map itself, which has no such bias).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from copgen_jax.diffusion import samplers
from copgen_jax.diffusion.samplers import (dpmpp_2m_sde_update, dpmpp_2m_update, ddim_update, sample,
                                           timestep_grid, x0_from_eps)
from copgen_jax.diffusion.schedule import Schedule

SCHED = Schedule()
N = SCHED.num_steps
MU_A, SLOPE, OFFSET, NOISE = 0.3, 0.8, 0.1, 0.6
NAMES = ("a", "b")
MEAN = np.array([MU_A, SLOPE * MU_A + OFFSET])
COV = np.array([[1.0, SLOPE], [SLOPE, SLOPE ** 2 + NOISE ** 2]])
SHAPES = {"a": (2, 4, 4), "b": (2, 4, 4), "c": (1, 2, 2)}
BATCH = 512  # x 32 dims = 16384 draws per modality: std error of a mean ≈ 0.008


def gaussian_eps_fn(mean=MEAN, cov=COV, names=NAMES):
    """Exact E[ε | x_t] for the joint Gaussian, over the modalities present in ``latents``.

    Modalities missing from ``latents`` are marginalised out (the exact answer for
    a dropped modality); any extra modality (e.g. "c") gets ε = 0.
    """
    ab_table = jnp.asarray(SCHED.alpha_bars, jnp.float32)

    def eps_fn(latents, timesteps, present):
        ns = [n for n in names if n in latents]
        ix = [names.index(n) for n in ns]
        ab = jnp.stack([ab_table[timesteps[n]] for n in ns], 1)  # (B, k)
        a, s = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        cov_y = a[:, :, None] * a[:, None, :] * jnp.asarray(cov[np.ix_(ix, ix)], jnp.float32)
        cov_y = cov_y + jax.vmap(jnp.diag)(s ** 2)
        batch = ab.shape[0]
        y = jnp.stack([latents[n].reshape(batch, -1) for n in ns], -1)  # (B, D, k)
        resid = y - a[:, None, :] * jnp.asarray(mean[ix], jnp.float32)
        sol = jnp.einsum("bij,bdj->bdi", jnp.linalg.inv(cov_y), resid)
        eps = s[:, None, :] * sol
        out = {n: eps[..., i].reshape(latents[n].shape) for i, n in enumerate(ns)}
        return {**{n: jnp.zeros_like(x) for n, x in latents.items()}, **out}
    return eps_fn


def run(generate, conditions=None, *, rng=0, shapes=None, eps_fn=None, **kw):
    kw = {"absent": "drop", "steps": 50, "sampler": "ddim", **kw}
    return sample(eps_fn or gaussian_eps_fn(), SCHED, jax.random.key(rng),
                  shapes=shapes or {n: SHAPES[n] for n in NAMES}, batch=BATCH,
                  conditions=conditions or {}, generate=generate, **kw)


def draw_a(rng=7):
    return MU_A + jax.random.normal(jax.random.key(rng), (BATCH, *SHAPES["a"]))


def moments(x):
    x = np.asarray(x, np.float64)
    return x.mean(), x.std()


# (solver, tolerance on each std). Measured std errors at BATCH = 512 are about
# ddim50 0.03, ddim50 with η = 1 0.05-0.06 (ancestral steps this coarse under-disperse;
# 200 steps: 0.025, 1000: 0.01), dpm++20 0.02-0.045, dpm++20 on the logsnr grid < 0.005,
# dpm++sde20 on the logsnr grid 0.005-0.027 over seeds 0-2 (over-dispersed ~1.5% in std at 20 steps,
# plus its draws' Monte Carlo error).
SOLVERS = [(dict(sampler="ddim", steps=50, eta=0.0), 0.05), (dict(sampler="ddim", steps=50, eta=1.0), 0.075),
           (dict(sampler="dpm++", steps=20), 0.06), (dict(sampler="dpm++", steps=20, spacing="logsnr"), 0.015),
           (dict(sampler="dpm++sde", steps=20, spacing="logsnr"), 0.04)]
IDS = ["ddim50", "ddim50-eta1", "dpm++20", "dpm++20-logsnr", "dpm++sde20-logsnr"]


@pytest.mark.parametrize("solver, tol", SOLVERS, ids=IDS)
def test_joint_marginal_moments(solver, tol):
    out = run(("a", "b"), **solver)
    for got, (mu, sd) in [(out["a"], (MU_A, 1.0)), (out["b"], (MEAN[1], np.sqrt(COV[1, 1]))),
                          (out["b"] - SLOPE * out["a"] - OFFSET, (0.0, NOISE))]:
        m, s = moments(got)
        assert abs(m - mu) < 0.05 and abs(s - sd) < tol, (solver, m, mu, s, sd)


@pytest.mark.parametrize("solver, tol", SOLVERS, ids=IDS)
def test_conditional_matches_exact(solver, tol):
    a = draw_a()
    out = run(("b",), {"a": a}, **solver)
    m, s = moments(out["b"] - SLOPE * a - OFFSET)  # exact: N(0, NOISE²)
    assert abs(m) < 0.035 and abs(s - NOISE) < tol, (solver, m, s)
    assert out["a"] is a  # conditions come back as given


@pytest.mark.parametrize("solver, tol", SOLVERS, ids=IDS)
def test_dropped_condition_gives_marginal(solver, tol):
    m, s = moments(run(("b",), **solver)["b"])  # A dropped: B alone, exact marginal
    assert abs(m - MEAN[1]) < 0.05 and abs(s - np.sqrt(COV[1, 1])) < tol, (solver, m, s)


def exact_flow_map(z, mu, sd):
    """Where the probability-flow ODE takes x_N = z for 1-D N(mu, sd²) data: same z-score."""
    ab = SCHED.alpha_bars[-1]
    return mu + sd * (z - np.sqrt(ab) * mu) / np.sqrt(ab * sd ** 2 + 1 - ab)


# Measured RMS error / sd: sd = 1: ddim50 0.028, ddim20 0.069, dpm++20 0.016, dpm++50 0.004,
# dpm++20 logsnr 0.006; sd = 0.5: 0.052, 0.120, 0.070, 0.020, 0.004. On the uniform grid
# DPM++ at 20 steps matches DDIM at 50 for unit-variance data and is ~1.3x worse at sd = 0.5.
@pytest.mark.parametrize("sd, dpm20_vs_ddim50", [(0.5, 1.5), (1.0, 1.0)])
def test_solver_accuracy(sd, dpm20_vs_ddim50):
    """Deterministic solvers against the exact flow map from the same initial noise (no MC error)."""
    eps_fn = gaussian_eps_fn(np.array([0.5]), np.array([[sd ** 2]]), ("a",))
    init_key = jax.random.split(jax.random.fold_in(jax.random.key(0), 0), 1)[0]  # sample()'s x_N
    exact = exact_flow_map(np.asarray(jax.random.normal(init_key, (BATCH, *SHAPES["a"]))), 0.5, sd)
    err = {}
    for name, kw in [("ddim50", dict(sampler="ddim", steps=50)), ("ddim20", dict(sampler="ddim", steps=20)),
                     ("dpm++20", dict(sampler="dpm++", steps=20)), ("dpm++50", dict(sampler="dpm++", steps=50)),
                     ("dpm++20-logsnr", dict(sampler="dpm++", steps=20, spacing="logsnr"))]:
        out = run(("a",), eps_fn=eps_fn, shapes={"a": SHAPES["a"]}, **kw)["a"]
        err[name] = float(np.sqrt(np.mean((np.asarray(out) - exact) ** 2))) / sd
    print(sd, {k: round(v, 4) for k, v in err.items()})
    assert err["ddim50"] < 0.065 and err["ddim50"] < err["ddim20"] / 2  # first order: ~2.5x fewer steps, ~2.5x error
    assert err["dpm++50"] < err["ddim50"] / 2  # second order pays off
    assert err["dpm++20"] < err["ddim50"] * dpm20_vs_ddim50  # 20 DPM++ evaluations vs 50 DDIM ones
    assert err["dpm++20-logsnr"] < err["ddim50"] / 2


def test_dpmpp_first_order_is_ddim():
    """DPM-Solver++ at first order is DDIM (η = 0), and both return x0 on the step to clean data."""
    k1, k2 = jax.random.split(jax.random.key(3))
    x, eps = {"a": jax.random.normal(k1, (4, 3))}, {"a": jax.random.normal(k2, (4, 3))}
    ab_t, ab_s = jnp.float32(0.3), jnp.float32(0.6)
    x0 = x0_from_eps(x, eps, ab_t)
    d = ddim_update(x, eps, ab_t, ab_s)
    p = dpmpp_2m_update(x, x0, x0, ab_t, ab_s, ab_t, jnp.bool_(False))
    np.testing.assert_allclose(p["a"], d["a"], rtol=1e-5, atol=1e-5)
    for out in (ddim_update(x, eps, ab_t, 1.0, eta=1.0, noise=eps),
                dpmpp_2m_update(x, x0, x0, ab_t, jnp.float32(1.0), ab_t, jnp.bool_(False))):
        np.testing.assert_allclose(out["a"], x0["a"], rtol=1e-6)


def test_dpmpp_sde_update_reduces_to_ddpm_and_to_dpmpp():
    """The SDE step at first order and η = 1 is DDIM's η = 1 (ancestral) step with the same noise;
    at η = 0 it is DPM-Solver++(2M), second order included; to clean data it returns x0 exactly."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(4), 4)
    x, eps = {"a": jax.random.normal(k1, (4, 3))}, {"a": jax.random.normal(k2, (4, 3))}
    z, x0_prev = {"a": jax.random.normal(k3, (4, 3))}, {"a": jax.random.normal(k4, (4, 3))}
    ab_t, ab_s, ab_prev = jnp.float32(0.3), jnp.float32(0.6), jnp.float32(0.1)
    x0 = x0_from_eps(x, eps, ab_t)
    no = jnp.bool_(False)
    np.testing.assert_allclose(dpmpp_2m_sde_update(x, x0, x0, ab_t, ab_s, ab_t, no, z)["a"],
                               ddim_update(x, eps, ab_t, ab_s, eta=1.0, noise=z)["a"], rtol=1e-5, atol=1e-5)
    for second in (no, jnp.bool_(True)):
        np.testing.assert_allclose(dpmpp_2m_sde_update(x, x0, x0_prev, ab_t, ab_s, ab_prev, second, z, eta=0.0)["a"],
                                   dpmpp_2m_update(x, x0, x0_prev, ab_t, ab_s, ab_prev, second)["a"],
                                   rtol=1e-5, atol=1e-5)
    for eta in (1.0, 0.5, 0.0):
        last = dpmpp_2m_sde_update(x, x0, x0_prev, ab_t, jnp.float32(1.0), ab_prev, no, z, eta=eta)
        np.testing.assert_array_equal(last["a"], x0["a"])


# Sample variance / data variance of dpm++sde with the exact ε, 4096 x 32 = 131072 draws (std
# error of the ratio sqrt(2/131072) = 0.004), mean of two seeds, logsnr grid: 20 steps 1.03
# (std 1) and 1.02 (std 0.5), 50 steps 1.005 and 1.00. The uniform grid's big last λ step
# under-disperses at 20 steps: 0.98 and 0.84; 50 steps: 1.00 and 0.96.
@pytest.mark.parametrize("steps, tol", [(20, 0.05), (50, 0.025)])
@pytest.mark.parametrize("sd", [1.0, 0.5])
def test_dpmpp_sde_samples_have_the_data_variance(sd, steps, tol):
    eps_fn = gaussian_eps_fn(np.array([0.2]), np.array([[sd ** 2]]), ("a",))
    out = sample(eps_fn, SCHED, jax.random.key(11), shapes={"a": SHAPES["a"]}, batch=4096, conditions={},
                 generate=("a",), steps=steps, sampler="dpm++sde", spacing="logsnr")["a"]
    m, s = moments(out)
    ratio = s ** 2 / sd ** 2
    print(sd, steps, round(ratio, 4), round(m, 4))
    assert np.all(np.isfinite(np.asarray(out))) and abs(ratio - 1) < tol and abs(m - 0.2) < 0.02, (ratio, m)


def test_dpmpp_sde_at_eta_zero_is_dpmpp():
    a = draw_a()
    for kw in (dict(), dict(known={"b": (draw_a(3), one_unknown_pixel())}, resample=1)):
        np.testing.assert_allclose(run(("b",), {"a": a}, steps=6, sampler="dpm++sde", eta=0.0, **kw)["b"],
                                   run(("b",), {"a": a}, steps=6, sampler="dpm++", **kw)["b"], rtol=0, atol=1e-4)


def test_absent_noise_marginalises_but_noise_as_clean_data_does_not():
    """absent="noise" (A fed noise at t = N) gives B's marginal; the release's t = 0 does not."""
    mu_b, sd_b = MEAN[1], np.sqrt(COV[1, 1])
    out = run(("b",), absent="noise")
    m, s = moments(out["b"])
    assert abs(m - mu_b) < 0.05 and abs(s - sd_b) < 0.05 * sd_b, (m, s)

    eps_fn = gaussian_eps_fn()
    at_zero = lambda lat, t, p: eps_fn(lat, {**t, "a": jnp.zeros_like(t["a"])}, p)
    m0, _ = moments(run(("b",), absent="noise", eps_fn=at_zero)["b"])
    assert abs(m0 - (mu_b - SLOPE * MU_A)) < 0.05  # B conditioned on "A = noise": mean pulled by SLOPE·MU_A


# -- plumbing ------------------------------------------------------------------
def recording_eps_fn(log):
    """ε = 0 for everything; records what it is called with (names at trace time, values per step)."""
    def eps_fn(latents, timesteps, present):
        log["names"] = sorted(latents)
        jax.debug.callback(lambda t, p, lat: log["steps"].append((t, p, lat)),
                           {n: t[0] for n, t in timesteps.items()}, {n: p[0] for n, p in present.items()},
                           {n: x[0, 0, 0, 0] for n, x in latents.items()}, ordered=True)
        return {n: jnp.zeros_like(x) for n, x in latents.items()}
    return eps_fn


@pytest.mark.parametrize("absent", ["drop", "noise"])
def test_absent_modalities(absent):
    log = {"steps": []}
    a = draw_a()
    out = run(("b",), {"a": a}, shapes=SHAPES, eps_fn=recording_eps_fn(log), absent=absent, steps=5)
    assert sorted(out) == ["a", "b"]
    grid = timestep_grid(SCHED, 5)
    assert [int(t["b"]) for t, _, _ in log["steps"]] == list(grid[:-1])
    assert all(int(t["a"]) == 0 for t, _, _ in log["steps"])
    if absent == "drop":
        assert log["names"] == ["a", "b"]
        assert all(bool(p["a"]) and bool(p["b"]) and not bool(p["c"]) for _, p, _ in log["steps"])
    else:
        assert log["names"] == ["a", "b", "c"]
        assert all(int(t["c"]) == N and all(bool(v) for v in p.values()) for t, p, _ in log["steps"])
        noise = [float(lat["c"]) for _, _, lat in log["steps"]]
        assert len(set(noise)) == len(noise)  # fresh noise at every step


@pytest.mark.parametrize("sampler", ["ddim", "dpm++sde"])
def test_conditions_bit_identical_and_seeded(sampler):
    a = draw_a()
    jitted = jax.jit(functools.partial(run, ("b",), sampler=sampler, steps=10))  # ``a`` becomes a traced input
    out1, out2, out3 = jitted({"a": a}, rng=0), jitted({"a": a}, rng=0), jitted({"a": a}, rng=1)
    assert out1["a"].dtype == a.dtype and np.array_equal(np.asarray(out1["a"]), np.asarray(a))
    assert np.array_equal(out1["b"], out2["b"])
    assert not np.allclose(out1["b"], out3["b"])


def test_guidance_one_and_zero_are_the_plain_samplers():
    """w = 1 is conditional sampling itself; w = 0 is sampling with the condition dropped."""
    a = draw_a()
    np.testing.assert_array_equal(run(("b",), {"a": a}, guidance=1.0)["b"], run(("b",), {"a": a})["b"])
    np.testing.assert_array_equal(run(("b",), {"a": a}, guidance=0.0)["b"], run(("b",))["b"])


@pytest.mark.parametrize("absent", ["drop", "noise"])
@pytest.mark.parametrize("solver", [dict(), dict(sampler="dpm++sde", steps=20, spacing="logsnr")],
                         ids=["ddim50", "dpm++sde20"])
def test_guidance_scales_the_dependence_on_the_condition(absent, solver):
    """Regression slope of B on the given A: 0 unguided, the exact SLOPE at w = 1, steeper above."""
    a = draw_a()
    out = {w: run(("b",), {"a": a}, guidance=w, absent=absent, **solver)["b"] for w in (0.0, 1.0, 2.0)}
    assert all(v.shape == a.shape and np.all(np.isfinite(np.asarray(v))) for v in out.values())
    slope = {w: np.polyfit(np.asarray(a).ravel(), np.asarray(v).ravel(), 1)[0] for w, v in out.items()}
    assert abs(slope[0.0]) < 0.05 and abs(slope[1.0] - SLOPE) < 0.05 and slope[2.0] > SLOPE + 0.2, slope


def test_jit_traces_once():
    traces = []
    eps_fn = gaussian_eps_fn()
    counted = lambda lat, t, p: (traces.append(1), eps_fn(lat, t, p))[1]
    fn = jax.jit(functools.partial(sample, counted, SCHED, shapes={n: SHAPES[n] for n in NAMES}, batch=BATCH,
                                   generate=("b",), absent="drop", steps=10, sampler="dpm++"))
    a = draw_a()
    first = fn(jax.random.key(0), conditions={"a": a})
    n_traces = len(traces)
    second = fn(jax.random.key(1), conditions={"a": a + 1.0})
    assert n_traces == 1 and len(traces) == n_traces  # one trace of the scan body, no retrace
    assert not np.allclose(first["b"], second["b"])


def test_timestep_grids():
    np.testing.assert_array_equal(timestep_grid(SCHED, 1), [N, 0])
    np.testing.assert_array_equal(timestep_grid(SCHED, 4), [N, 667, 334, 1, 0])
    for spacing in samplers.SPACINGS:
        for steps in (2, 20, 999, N):
            g = timestep_grid(SCHED, steps, spacing)
            assert len(g) == steps + 1 and g[0] == N and g[-2] == 1 and g[-1] == 0 and np.all(np.diff(g) < 0)
    lam = samplers.log_snr(SCHED)[timestep_grid(SCHED, 20, "logsnr")[:-1] - 1]
    assert np.all(np.abs(np.diff(lam) / np.mean(np.diff(lam)) - 1) < 0.25)  # even in λ, up to rounding n


@pytest.mark.parametrize("kwargs, match", [
    (dict(generate=("a",), conditions={"a": None}), r"\['a'\] are both given as conditions and asked"),
    (dict(sampler="euler"), r"unknown sampler 'euler': choose one of \('ddim', 'dpm\+\+', 'dpm\+\+sde'\)"),
    (dict(steps=0), r"steps must be an integer in \[1, 1000\]"),
    (dict(steps=2.5), r"steps must be an integer"),
    (dict(conditions={"a": np.zeros((BATCH, 2, 4, 3))}),
     r"condition 'a' has shape \(512, 2, 4, 3\), expected \(batch, C, H, W\) = \(512, 2, 4, 4\)"),
    (dict(generate=("s2",)), r"unknown modality 's2': the model has \['a', 'b'\]"),
    (dict(absent="zero"), r"unknown absent mode 'zero'"),
    (dict(spacing="karras"), r"unknown timestep spacing 'karras'"),
    (dict(generate=()), r"nothing to generate"),
    (dict(generate=("b", "b")), r"`generate` names a modality twice"),
    (dict(eta=-0.5), r"eta must be >= 0"),
    (dict(guidance=-1.0), r"guidance must be a finite number >= 0"),
    (dict(guidance=float("nan")), r"guidance must be a finite number >= 0"),
])
def test_errors(kwargs, match):
    kwargs = {"generate": ("b",), **kwargs}
    with pytest.raises(ValueError, match=match):
        run(kwargs.pop("generate"), kwargs.pop("conditions", None), **kwargs)


def test_v_prediction_converts_to_the_same_eps():
    """A v-predicting network, read through ``Schedule.eps``, samples the exact conditional too."""
    v_sched = Schedule(prediction="v")
    exact = gaussian_eps_fn()

    def v_network(latents, timesteps, present):  # what an exact v-model outputs: a·ε - s·x0
        eps = exact(latents, timesteps, present)
        out = {}
        for n, x in latents.items():
            a, s = v_sched.coefficients(timesteps[n])
            a, s = a.reshape((-1,) + (1,) * (x.ndim - 1)), s.reshape((-1,) + (1,) * (x.ndim - 1))
            x0 = (x - s * eps[n]) / a
            out[n] = a * eps[n] - s * x0
        return out

    def eps_fn(latents, timesteps, present):
        out = v_network(latents, timesteps, present)
        return {n: v_sched.eps(out[n], latents[n], timesteps[n]) for n in out}

    a = draw_a()
    out = run(("b",), {"a": a}, eps_fn=eps_fn)
    m, s = moments(out["b"] - SLOPE * a - OFFSET)
    assert abs(m) < 0.035 and abs(s - NOISE) < 0.05, (m, s)
    x0, eps = draw_a(1), draw_a(2)
    n = jnp.arange(1, BATCH + 1) % N + 1
    x_n = v_sched.q_sample(x0, n, eps)
    np.testing.assert_allclose(v_sched.eps(v_sched.target(x0, n, eps), x_n, n), eps, atol=2e-5)
    assert Schedule().target(x0, n, eps) is eps
    with pytest.raises(ValueError, match="prediction"):
        Schedule(prediction="x0")


# -- region conditioning (known latent pixels) --------------------------------------------
def one_unknown_pixel(batch=BATCH):
    mask = np.ones((batch, 4, 4), bool)
    mask[:, 1, 2] = False
    return mask


@pytest.mark.parametrize("solver", [dict(sampler="ddim", steps=5), dict(sampler="dpm++", steps=5),
                                    dict(sampler="ddim", steps=5, eta=1.0, resample=1),
                                    dict(sampler="dpm++", steps=5, resample=2), dict(sampler="dpm++sde", steps=5),
                                    dict(sampler="dpm++sde", steps=5, resample=1)],
                         ids=["ddim", "dpm++", "ddim-eta1-r1", "dpm++-r2", "dpm++sde", "dpm++sde-r1"])
def test_known_latent_pixels_come_back_exactly(solver):
    z0, mask = draw_a(), one_unknown_pixel()
    out = run(("a", "b"), known={"a": (z0, mask)}, **solver)
    got, want = np.asarray(out["a"]), np.asarray(z0)
    np.testing.assert_array_equal(got[:, :, mask[0]], want[:, :, mask[0]])
    generated = got[:, :, 1, 2]
    assert np.all(np.isfinite(generated)) and not np.allclose(generated, want[:, :, 1, 2], atol=0.1)
    assert 0.5 < generated.std() < 1.5  # a draw of A's marginal (std 1), not a copy of z0


def test_nothing_known_leaves_every_draw_unchanged():
    """An all-False mask pastes nothing: the sampler's random streams are those without ``known``
    (equal up to float round-off: XLA fuses the graph with the masked selects differently)."""
    for solver in (dict(sampler="ddim", eta=1.0), dict(sampler="dpm++")):
        plain = run(("a", "b"), steps=4, **solver)
        masked = run(("a", "b"), steps=4, known={"a": (draw_a(), np.zeros((BATCH, 4, 4), bool))}, **solver)
        for n in NAMES:
            np.testing.assert_allclose(plain[n], masked[n], rtol=0, atol=1e-5)


def test_known_part_conditions_the_rest_and_jumps_condition_more():
    """A fully known A held on its noised z0 conditions B (replacement conditioning). It under-
    conditions: the regression slope of B on A measured 0.38 at dpm++ 20 steps (exact 0.8); one
    RePaint jump per step brings it to 0.55, two to 0.64."""
    a = draw_a()
    mask = np.ones((BATCH, 4, 4), bool)

    def slope(resample):
        out = run(("a", "b"), known={"a": (a, mask)}, sampler="dpm++", steps=20, resample=resample)
        return np.polyfit(np.asarray(a).ravel(), np.asarray(out["b"]).ravel(), 1)[0]

    plain, jumped = slope(0), slope(1)
    assert 0.3 < plain < jumped < SLOPE, (plain, jumped)


@pytest.mark.parametrize("known, resample, match", [
    ({"b": (np.zeros((BATCH, 2, 4, 4)), np.ones((BATCH, 4, 4), bool))}, 0, r"known 'b' is not generated"),
    ({"a": (np.zeros((BATCH, 2, 4, 4)), np.ones((BATCH, 4, 3), bool))}, 0,
     r"latent mask has shape \(512, 4, 3\), expected \(batch, H, W\) = \(512, 4, 4\)"),
    ({"a": (np.zeros((BATCH, 2, 4, 3)), np.ones((BATCH, 4, 4), bool))}, 0, r"latent has shape \(512, 2, 4, 3\)"),
    ({"a": (np.zeros((BATCH, 2, 4, 4)), np.ones((BATCH, 4, 4), bool))}, -1, r"resample must be an integer >= 0"),
])
def test_known_errors(known, resample, match):
    with pytest.raises(ValueError, match=match):
        run(("a",), known=known, resample=resample, steps=2)
