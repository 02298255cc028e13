"""Metrics against hand-computed values and known limiting cases."""
import math
import statistics

import numpy as np
import pytest

from copgen_jax.evaluate import metrics as M


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------- regression

def test_mae_rmse_per_band_pooled_and_masked():
    target = np.zeros((2, 2, 2, 2))
    pred = target.copy()
    pred[:, 0] = 1.0           # band 0: every error 1
    pred[0, 1, 0, 0] = 4.0     # band 1: one error of 4 among 8 pixels
    np.testing.assert_allclose(M.mae(pred, target), [1.0, 0.5])
    np.testing.assert_allclose(M.rmse(pred, target), [1.0, math.sqrt(16 / 8)])
    assert M.mae(pred, target, per_band=False) == pytest.approx((8 + 4) / 16)
    assert M.rmse(pred, target, per_band=False) == pytest.approx(math.sqrt((8 + 16) / 16))
    mask = np.ones((2, 2, 2, 2), bool)
    mask[0, 1, 0, 0] = False
    np.testing.assert_allclose(M.mae(pred, target, mask=mask), [1.0, 0.0])
    empty = np.zeros((1, 2, 1, 1), bool)  # (..., C, H, W) mask that broadcasts
    empty[0, 0] = True
    out = M.mae(pred, target, mask=empty)
    assert out[0] == 1.0 and np.isnan(out[1])


def test_pointwise_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"mae: pred has shape \(1, 2, 3, 3\) but target has shape \(1, 2, 3, 4\)"):
        M.mae(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="psnr: expected"):
        M.psnr(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="mask of shape"):
        M.rmse(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)), mask=np.ones((4,), bool))
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        M.ssim(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))


def test_psnr_hand_computed_and_scaled_to_target_range():
    t = np.array([[[0.0, 1.0], [0.5, 0.25]]])
    p = np.array([[[0.1, 0.9], [0.5, 0.25]]])
    expected = 10 * math.log10(1 / ((0.01 + 0.01) / 4))  # 23.0103 dB
    np.testing.assert_allclose(M.psnr(p, t), [expected])
    # Physical units: scaling to the target's range makes PSNR unit-free.
    np.testing.assert_allclose(M.psnr(p * 3000 - 50, t * 3000 - 50), [expected])
    # Values beyond the target's range are clipped to it: an overshoot of 1 costs only 0.1.
    p_over = np.array([[[0.1, 2.0], [0.5, 0.25]]])
    np.testing.assert_allclose(M.psnr(p_over, t), [10 * math.log10(1 / (0.01 / 4))])
    assert np.isinf(M.psnr(t, t)).all()


def _gauss_2d():
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    return np.outer(g, g) / np.outer(g, g).sum()


def _ssim_window(p, t, w):
    mp, mt = (w * p).sum(), (w * t).sum()
    vp, vt = (w * p * p).sum() - mp ** 2, (w * t * t).sum() - mt ** 2
    cov = (w * p * t).sum() - mp * mt
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (2 * mp * mt + c1) * (2 * cov + c2) / ((mp ** 2 + mt ** 2 + c1) * (vp + vt + c2))


def test_ssim_identical_images_is_one():
    x = _rng().random((3, 2, 16, 16)) * 1000
    np.testing.assert_allclose(M.ssim(x, x), [1.0, 1.0])


def test_ssim_single_window_hand_computed():
    t = _rng(1).random((11, 11))
    t[0, 0], t[0, 1] = 0.0, 1.0            # range [0, 1]: scaling is the identity
    p = 0.5 * t + 0.2                      # stays in [0, 1]: no clipping
    got = M.ssim(p[None], t[None])
    np.testing.assert_allclose(got, [_ssim_window(p, t, _gauss_2d())], rtol=1e-12)
    assert 0 < got[0] < 1


def test_ssim_equals_brute_force_over_windows_and_images():
    rng = _rng(2)
    t = rng.random((2, 1, 13, 14))
    p = t + 0.3 * rng.normal(size=t.shape)
    w = _gauss_2d()
    per_image = []
    for i in range(2):
        lo, hi = t[i, 0].min(), t[i, 0].max()
        ts, ps = (t[i, 0] - lo) / (hi - lo), np.clip((p[i, 0] - lo) / (hi - lo), 0, 1)
        per_image.append(np.mean([_ssim_window(ps[r:r + 11, c:c + 11], ts[r:r + 11, c:c + 11], w)
                                  for r in range(3) for c in range(4)]))
    np.testing.assert_allclose(M.ssim(p, t), [np.mean(per_image)], rtol=1e-10)


def test_ssim_mask_drops_windows_touching_invalid_pixels():
    t = _rng(3).random((1, 1, 24, 24))
    p = t.copy()
    p[..., 14:, 14:] = 1 - t[..., 14:, 14:]   # corrupted corner
    mask = np.ones_like(t, bool)
    mask[..., 14:, 14:] = False
    assert M.ssim(p, t)[0] < 0.9
    np.testing.assert_allclose(M.ssim(p, t, mask=mask), [1.0])


# ---------------------------------------------------------------------------- classification

TARGET = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 2, 2])


def test_confusion_and_class_metrics_hand_made():
    cm = M.confusion_matrix(PRED, TARGET, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    iou = np.array([2 / 3, 1 / 3, 1 / 2])
    f1 = np.array([4 / 5, 2 / 4, 2 / 3])
    for args in ((PRED, TARGET), (cm,)):   # label maps or an accumulated confusion matrix
        assert M.class_accuracy(*args) == pytest.approx(4 / 6)
        assert M.miou(*args) == pytest.approx(iou.mean())
        assert M.mean_f1(*args) == pytest.approx(f1.mean())
        assert M.fw_iou(*args) == pytest.approx((3 * iou[0] + 2 * iou[1] + 1 * iou[2]) / 6)
    # A class absent from both maps is left out of the means; class 0 counts like any other.
    assert M.miou(PRED, TARGET, num_classes=5) == pytest.approx(iou.mean())
    keep = TARGET != 0
    assert M.miou(PRED, TARGET, mask=keep) == pytest.approx(np.mean([1 / 2, 1 / 2, 1 / 2]))
    assert M.class_accuracy(PRED, TARGET, mask=keep) == pytest.approx(2 / 3)


def test_class_metrics_reject_bad_labels():
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        M.confusion_matrix(PRED, TARGET, 2)
    with pytest.raises(ValueError, match="codec.index_of"):
        M.confusion_matrix(PRED, TARGET * 10 - 5)
    with pytest.raises(ValueError, match="same shape"):
        M.miou(PRED, TARGET[:3])
    with pytest.raises(ValueError, match=r"\(K, K\) confusion"):
        M.miou(np.ones((2, 3)))


# ---------------------------------------------------------------------------- location and date

def test_haversine_geometry_and_city_pairs():
    r = M.EARTH_RADIUS_KM
    assert M.haversine_km([0, 0], [90, 0]) == pytest.approx(math.pi / 2 * r)
    assert M.haversine_km([0, 0], [0, 180]) == pytest.approx(math.pi * r)
    assert M.haversine_km([0, 179.5], [0, -179.5]) == pytest.approx(math.pi / 180 * r)
    pairs = np.array([[[48.8566, 2.3522], [51.5074, -0.1278]],      # Paris - London
                      [[40.7128, -74.0060], [34.0522, -118.2437]]])  # New York - Los Angeles
    np.testing.assert_allclose(M.haversine_km(pairs[:, 0], pairs[:, 1]), [343.6, 3935.7], rtol=2e-3)


def test_within_km_accuracy():
    deg = 1 / (math.pi / 180 * M.EARTH_RADIUS_KM)  # one km of latitude, in degrees
    pred = np.array([[0.5 * deg, 0], [5 * deg, 0], [60 * deg, 0], [1000 * deg, 0]])
    acc = M.within_km_accuracy(pred, np.zeros((4, 2)))
    assert acc == pytest.approx({1: 0.25, 10: 0.5, 50: 0.5, 100: 0.75, 500: 0.75})
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\) \[lat, lon\]"):
        M.haversine_km(np.zeros((4, 3)), np.zeros((4, 3)))


def test_date_metrics():
    pred = np.array(["2020-01-31", "2020-03-01", "2021-06-15"], "datetime64[D]")
    true = np.array(["2020-02-01", "2020-02-28", "2020-06-15"], "datetime64[D]")
    np.testing.assert_array_equal(M.day_error(pred, true), [1, 2, 365])
    assert M.month_accuracy(pred, true) == pytest.approx(1 / 3)   # only June matches
    assert M.year_accuracy(pred, true) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="NaT"):
        M.day_error(np.array(["NaT"], "datetime64[D]"), true[:1])


# ---------------------------------------------------------------------------- calibration

def test_crps_point_ensemble_equals_mae():
    rng = _rng(4)
    truth, pred = rng.random((2, 8, 8)), rng.random((2, 8, 8))
    assert M.crps(truth, pred[None]) == pytest.approx(M.mae(pred, truth, per_band=False))


def test_crps_two_member_hand_computed():
    # E|X - y| = (0.5 + 1.5) / 2 = 1, E|X - X'| = (0 + 2 + 2 + 0) / 4 = 1 -> 1 - 0.5 = 0.5
    assert M.crps(np.array([0.5]), np.array([[0.0], [2.0]])) == pytest.approx(0.5)


def test_crps_gaussian_ensemble_matches_closed_form():
    # A quantile ensemble (member i at the (i + 1/2)/M quantile) has no sampling noise.
    mu, sigma, y, m = 1.0, 2.0, np.array([1.0, 2.5, -3.0]), 4000
    quantiles = [statistics.NormalDist(mu, sigma).inv_cdf((i + 0.5) / m) for i in range(m)]
    samples = np.repeat(np.array(quantiles)[:, None], 3, 1)
    z = (y - mu) / sigma
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    closed = sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    for i in range(3):
        assert M.crps(y[i:i + 1], samples[:, i:i + 1]) == pytest.approx(closed[i], rel=1e-3)


def test_interval_coverage():
    # Hand case by rank: 9 members 1..9, so the truth's rank among the 10 values sets its PIT.
    samples = np.broadcast_to(np.arange(1.0, 10.0)[:, None], (9, 4))
    # 5.5: PIT in [0.5, 0.6], inside [5, 95]; 0 and 20: PIT below 0.1 / above 0.9, outside [10, 90].
    assert M.interval_coverage(np.array([5.5, 5.5, 0.0, 20.0]), samples, 10, 90) == 0.5
    # A calibrated Gaussian ensemble covers 90% whatever its size; an overconfident one less.
    rng = _rng(6)
    mu = rng.normal(size=(50, 40))
    truth = mu + rng.standard_normal(mu.shape)
    for m in (8, 400):
        ens = mu + rng.standard_normal((m,) + mu.shape)
        assert M.interval_coverage(truth, ens) == pytest.approx(0.9, abs=0.025)
        # 8 ranks resolve little beyond the members' range: far too narrow still scores ~0.6
        assert M.interval_coverage(truth, 0.2 * (ens - mu) + mu) < (0.7 if m == 8 else 0.4)
    # A point forecast (identical members) covers only its exact hits.
    assert M.interval_coverage(truth, np.broadcast_to(mu, ens.shape)) == 0.0
    with pytest.raises(ValueError, match=r"samples must be \(M, \*truth.shape\)"):
        M.crps(truth, ens[:, :, :3])


def _gaussian_case(m, shape=(40, 100), seed=8):
    """Per-pixel means, a truth drawn from N(mu, 1) and m members drawn from the same N(mu, 1)."""
    rng = _rng(seed)
    mu = rng.normal(size=shape) * 3
    return mu, mu + rng.standard_normal(shape), mu + rng.standard_normal((m,) + shape)


def test_reliability_is_interval_coverage_at_each_level():
    mu, truth, ens = _gaussian_case(16)
    got = M.reliability(truth, ens, levels=(0.5, 0.9), seed=2)
    assert got[0] == M.interval_coverage(truth, ens, 25, 75, seed=2)
    assert got[1] == M.interval_coverage(truth, ens, 5, 95, seed=2)
    assert M.reliability(truth, ens).shape == (9,) and M.RELIABILITY_LEVELS[0] == 0.1
    np.testing.assert_array_equal(M.reliability(truth, ens, levels=(0.0, 1.0)), [0.0, 1.0])


def test_reliability_of_calibrated_narrow_and_point_ensembles():
    levels = np.asarray(M.RELIABILITY_LEVELS)
    for m in (8, 200):  # calibrated: the nominal mass itself, however few the members
        mu, truth, ens = _gaussian_case(m)
        got = M.reliability(truth, ens)
        np.testing.assert_allclose(got, levels, atol=0.03)  # 4000 pixels: sampling std <= 0.008
        assert np.all(np.diff(got) > 0)
    narrow = M.reliability(truth, mu + 0.5 * (ens - mu))  # std halved: 2 Phi(z_p / 2) - 1 < p
    assert np.all(narrow < 0.75 * levels) and narrow[-1] == pytest.approx(0.59, abs=0.03)
    point = np.broadcast_to(mu, ens.shape)  # identical members: only exact hits are covered
    np.testing.assert_array_equal(M.reliability(truth, point), np.zeros(9))
    hit = truth.copy()
    hit[:4] = mu[:4]  # 400 of 4000 pixels exactly right
    np.testing.assert_allclose(M.reliability(hit, point), np.full(9, 0.1))


def test_reliability_respects_the_mask_and_checks_its_inputs():
    mu, truth, ens = _gaussian_case(50, shape=(4, 30, 30))
    far = truth.copy()
    far[:2] += 100.0  # outside every interval, but masked out
    mask = np.zeros((4, 1, 1), bool)
    mask[2:] = True  # broadcasts over the pixels
    # the same pixels, their ranks randomised by other draws
    np.testing.assert_allclose(M.reliability(far, ens, mask=mask), M.reliability(truth[2:], ens[:, 2:]), atol=0.02)
    assert np.isnan(M.reliability(truth, ens, mask=np.zeros(truth.shape, bool))).all()
    with pytest.raises(ValueError, match=r"reliability: samples must be \(M, \*truth.shape\)"):
        M.reliability(truth, ens[:, :3])
    with pytest.raises(ValueError, match=r"levels must be a non-empty 1-D list of nominal masses in \[0, 1\]"):
        M.reliability(truth, ens, levels=(0.5, 1.2))
    with pytest.raises(ValueError, match="reliability: mask must be boolean"):
        M.reliability(truth, ens, mask=np.ones(truth.shape))


def _chi2(hist, n):
    """Pearson's statistic of a histogram of n values against the flat one."""
    flat = 1 / len(hist)
    return float(n * np.sum((hist - flat) ** 2) / flat)


def test_pit_is_flat_for_an_ensemble_from_the_truths_own_distribution():
    mu, truth, ens = _gaussian_case(19, shape=(100, 200))  # 20 000 pixels, 20 ranks: 2 a bin
    hist = M.pit_histogram(truth, ens)
    assert hist.shape == (10,) and hist.sum() == pytest.approx(1.0)
    assert _chi2(hist, truth.size) < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    assert np.abs(hist - 0.1).max() < 0.01
    # with 9 members the rank bins (tenths) are the histogram's: still flat, through the draws
    assert _chi2(M.pit_histogram(truth, ens[:9], seed=3), truth.size) < 27.9
    np.testing.assert_array_equal(M.pit_histogram(truth, ens, seed=5), M.pit_histogram(truth, ens, seed=5))


def test_pit_of_narrow_and_point_ensembles():
    mu, truth, ens = _gaussian_case(19, shape=(100, 200))
    narrow = M.pit_histogram(truth, mu + 0.5 * (ens - mu))  # std halved: PIT ~ Phi(2 z), U-shaped
    assert min(narrow[0], narrow[-1]) > 0.2 and max(narrow[3:7]) < 0.07
    assert np.all(np.diff(narrow[:5]) < 0) and np.all(np.diff(narrow[5:]) > 0)
    assert _chi2(narrow, truth.size) > 1000
    # 9 identical members: every miss within 1/10 of an end, on the side of the truth
    point = np.broadcast_to(mu, (9,) + mu.shape)
    hist = M.pit_histogram(truth, point)
    assert hist[0] + hist[-1] == pytest.approx(1.0) and hist[-1] == pytest.approx(np.mean(truth > mu))
    # exact hits tie with every member: randomised over the whole of [0, 1]
    ties = M.pit_histogram(mu, point)
    assert _chi2(ties, mu.size) < 27.9


def test_pit_respects_the_mask_and_checks_its_inputs():
    mu, truth, ens = _gaussian_case(9, shape=(2, 20, 20))
    above = mu + 1.0
    above[0] = mu[0] - 1.0  # image 0 below every member, image 1 above
    point = np.broadcast_to(mu, ens.shape)
    mask = np.array([True, False])[:, None, None]
    np.testing.assert_array_equal(M.pit_histogram(above, point, mask=mask), [1.0] + [0.0] * 9)
    np.testing.assert_array_equal(M.pit_histogram(above, point, bins=2, mask=~mask), [0.0, 1.0])
    assert np.isnan(M.pit_histogram(truth, ens, mask=np.zeros(truth.shape, bool))).all()
    with pytest.raises(ValueError, match=r"pit_histogram: samples must be \(M, \*truth.shape\)"):
        M.pit_histogram(truth, ens[None])
    with pytest.raises(ValueError, match="bins must be a positive integer, got 0"):
        M.pit_histogram(truth, ens, bins=0)
    with pytest.raises(ValueError, match="mask of shape"):
        M.pit_histogram(truth, ens, mask=np.ones((3,), bool))


# ---------------------------------------------------------------------------- set metrics

def test_identical_sets_are_precise_covered_and_close():
    x = _rng(7).normal(size=(200, 6))
    assert M.precision_recall(x, x) == (1.0, 1.0)
    assert abs(M.mmd(x, x)) < 0.02          # the unbiased estimator is -O(1/N) here
    assert M.nn_accuracy(x, x) == 0.0       # each sample's twin is in the other set


def test_far_apart_sets_score_zero_and_separable():
    rng = _rng(8)
    real, fake = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)) + 100
    assert M.precision_recall(real, fake) == (0.0, 0.0)
    assert M.nn_accuracy(real, fake) == 1.0
    assert M.mmd(real, fake) > 1.0


def test_same_distribution_sets_are_indistinguishable():
    rng = _rng(9)
    real, fake = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    assert M.nn_accuracy(real, fake) == pytest.approx(0.5, abs=0.08)
    assert abs(M.mmd(real, fake)) < 0.02
    assert M.mmd(real, fake + 1.0) > 10 * abs(M.mmd(real, fake))


def test_precision_recall_hand_made():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])   # k=1 radii: all 1
    fake = np.array([[0.5], [10.0]])                # k=1 radii: both 9.5
    assert M.precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert M.precision_recall(real, fake, k=5) == M.precision_recall(real, fake, k=3)  # k capped at N-1
    assert all(np.isnan(M.precision_recall(real[:1], fake)))


def test_mmd_hand_computed_with_median_bandwidth():
    real, fake = np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]])
    # Pooled pair distances 1,1,1,2,2,3: median 1.5, so sigma = 0.75.
    k = lambda d: math.exp(-d ** 2 / (2 * 0.75 ** 2))
    expected = k(1) + k(1) - 2 * (k(2) + k(3) + k(1) + k(2)) / 4
    assert M.mmd(real, fake) == pytest.approx(expected, rel=1e-6)
    assert M.mmd(real, fake, sigma=0.75) == pytest.approx(expected, rel=1e-12)


def test_wasserstein_hand_computed_and_unequal_sizes():
    np.testing.assert_allclose(M.wasserstein_per_band([[0.0], [1.0]], [[0.5]]), [0.5])
    # CDFs: real 1/2 on [0, 2), fake 2/3 on [1, 4): 1*1/2 + 1*1/6 + 2*1/3 = 4/3.
    np.testing.assert_allclose(M.wasserstein_per_band([[0.0], [2.0]], [[1.0], [1.0], [4.0]]), [4 / 3])
    rng = _rng(10)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(6, 3)) + 0.5
    # Repeating each sample of a 3 times and of b twice gives equal sizes with the same CDFs,
    # where W1 is the mean gap between sorted values.
    brute = np.abs(np.sort(np.repeat(a, 3, 0), 0) - np.sort(np.repeat(b, 2, 0), 0)).mean(0)
    np.testing.assert_allclose(M.wasserstein_per_band(a, b), brute, rtol=1e-12)


def test_spectral_range_coverage_hand_made():
    real = np.array([[0.0, 0.0, 0.0, 3.0, 3.0], [1.0, 4.0, 1.0, 3.0, 3.0]])
    fake = np.array([[0.5, 1.0, 5.0, 2.0, 5.0], [2.0, 2.0, 6.0, 4.0, 6.0]])
    np.testing.assert_allclose(M.spectral_range_coverage(real, fake), [0.5, 0.25, 0.0, 1.0, 0.0])


def test_intra_set_distance():
    assert M.intra_set_distance([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]]) == pytest.approx(4.0)
    assert np.isnan(M.intra_set_distance([[1.0, 2.0]]))


def test_set_metric_input_errors():
    with pytest.raises(ValueError, match="real has D=3 features but fake has D=4"):
        M.mmd(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"must be an \(N, D\) array"):
        M.precision_recall(np.zeros((5, 3, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        M.nn_accuracy(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="positive integer"):
        M.precision_recall(np.zeros((3, 2)), np.zeros((3, 2)), k=0)


# ---------------------------------------------------------------------------- images -> sets

def test_band_means_spectra_and_validity_filter():
    img = np.zeros((2, 2, 2, 2))
    img[0, 0] = [[1.0, 3.0], [0.0, 0.0]]
    img[1, 0] = 2.0
    np.testing.assert_allclose(M.band_means(img), [[2.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(M.band_means(img, zeros_excluded=False), [[1.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(M.spectra_embedding(img), M.band_means(img))
    np.testing.assert_array_equal(M.valid_real_image(img, 0), [False, True])
    assert M.valid_real_image(img[0], 0, min_nonzero=0.5) is True
    with pytest.raises(ValueError, match="band 2"):
        M.valid_real_image(img, 2)


def test_structure_embedding_hand_values_and_properties():
    checker = (np.indices((16, 16)).sum(0) % 2).astype(np.float64)
    x = np.stack([checker, np.full((16, 16), 7.0)])[None]   # (1, 2, 16, 16)
    emb = M.structure_embedding(x)
    per_band = M.STRUCTURE_FEATURES_PER_BAND
    assert emb.shape == (1, 2 * per_band)
    band0, band1 = emb[0, :per_band], emb[0, per_band:]
    np.testing.assert_allclose(band0[:42], 0.5)                # every cell mean and std is 0.5
    np.testing.assert_allclose(band0[42:45], [1.0, 1.0, 0.5])  # full-res |dy|, |dx|, band-pass RMS
    np.testing.assert_allclose(band0[45:], 0.0)                # pooled checkerboard is flat
    np.testing.assert_allclose(band1, [7.0] * 21 + [0.0] * 30)
    # Deterministic, positively homogeneous (one unit scale for all features), layout-aware.
    imgs = _rng(11).random((3, 2, 20, 24))
    np.testing.assert_array_equal(M.structure_embedding(imgs), M.structure_embedding(imgs.copy()))
    np.testing.assert_allclose(M.structure_embedding(2.5 * imgs), 2.5 * M.structure_embedding(imgs))
    assert not np.allclose(M.structure_embedding(imgs[..., ::-1, :]), M.structure_embedding(imgs))
    with pytest.raises(ValueError, match="H, W >= 8"):
        M.structure_embedding(np.zeros((1, 2, 4, 16)))
