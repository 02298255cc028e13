"""Pointwise and calibration metrics: a prediction (or an ensemble) against the truth.

Conventions shared by every function here:
  * Images are ``(..., C, H, W)`` arrays in physical evaluation units (S2 reflectance = DN / 1e4,
    S1 in dB, DEM in metres); leading axes index images. Per-band metrics return ``(C,)``
    float64 arrays that pool the leading axes and the pixels of each band.
  * ``mask`` (optional) is a boolean array that broadcasts to the data; True marks a valid pixel.
    Invalid pixels are left out of every sum, count, minimum and maximum. A band with no valid
    pixel scores NaN.
  * All arithmetic is float64; nothing is clipped or rescaled unless the docstring says so.
"""
from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
_MIN_RANGE = 1e-6  # the smallest target range min-max scaling divides by (flat targets)


# ---------------------------------------------------------------------------- input checks

def _pair(fn, pred, target, min_ndim=0):
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"{fn}: pred has shape {pred.shape} but target has shape {target.shape}; "
                         "pass arrays of the same shape")
    if pred.ndim < min_ndim:
        raise ValueError(f"{fn}: expected (..., C, H, W) images, got shape {pred.shape}")
    return pred, target


def _mask(fn, mask, shape):
    if mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"{fn}: mask must be boolean (True = valid pixel), got dtype {mask.dtype}")
    try:
        return np.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(f"{fn}: mask of shape {mask.shape} does not broadcast to the data "
                         f"shape {shape}") from None


def _ratio(num, den):
    """num / den with NaN where den == 0 (no valid pixel), without warnings."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(np.broadcast_shapes(num.shape, den.shape), np.nan),
                     where=den > 0)


def _band_mean(values, mask):
    """Mean of (..., C, H, W) values over everything but the band axis -> (C,)."""
    axes = tuple(i for i in range(values.ndim) if i != values.ndim - 3)
    return _ratio(np.where(mask, values, 0.0).sum(axes), mask.sum(axes))


# ---------------------------------------------------------------------------- regression

def mae(pred, target, mask=None, per_band=True):
    """Mean absolute error ``mean |pred - target|`` in the data's units.

    Per band (C,) over (..., C, H, W) images, or one number over every valid element when
    ``per_band=False`` (any shape then).
    """
    pred, target = _pair("mae", pred, target, 3 if per_band else 0)
    mask = _mask("mae", mask, pred.shape)
    err = np.abs(pred - target)
    return _band_mean(err, mask) if per_band else float(_ratio(err[mask].sum(), mask.sum()))


def rmse(pred, target, mask=None, per_band=True):
    """Root mean squared error ``sqrt(mean (pred - target)^2)``; pooling as in :func:`mae`."""
    pred, target = _pair("rmse", pred, target, 3 if per_band else 0)
    mask = _mask("rmse", mask, pred.shape)
    err = (pred - target) ** 2
    mse = _band_mean(err, mask) if per_band else _ratio(err[mask].sum(), mask.sum())
    return np.sqrt(mse) if per_band else float(np.sqrt(mse))


def _scale_to_target(pred, target, mask):
    """Min-max scale both images to the target's [min, max], per image and band, clipped to [0, 1]."""
    lo = np.where(mask, target, np.inf).min(axis=(-2, -1), keepdims=True)
    hi = np.where(mask, target, -np.inf).max(axis=(-2, -1), keepdims=True)
    empty = ~np.isfinite(lo)  # no valid pixel: any finite scale will do, nothing is counted
    lo, hi = np.where(empty, 0.0, lo), np.where(empty, 1.0, hi)
    span = np.maximum(hi - lo, _MIN_RANGE)
    return np.clip((pred - lo) / span, 0, 1), np.clip((target - lo) / span, 0, 1)


def psnr(pred, target, mask=None):
    """Peak signal-to-noise ratio per band, dB: ``10 log10(1 / MSE)``.

    Both images are first min-max scaled with the *target's* per-image, per-band [min, max]
    (range floored at 1e-6) and clipped to [0, 1], so the data range is 1 (= the target's
    physical range). The MSE pools all images and valid pixels of a band. Identical images
    give ``inf``.
    """
    pred, target = _pair("psnr", pred, target, 3)
    mask = _mask("psnr", mask, pred.shape)
    p01, t01 = _scale_to_target(pred, target, mask)
    mse = _band_mean((p01 - t01) ** 2, mask)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse)


def _gaussian_taps(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    x = np.arange(size) - (size - 1) / 2
    taps = np.exp(-x ** 2 / (2 * sigma ** 2))
    return taps / taps.sum()


def _filter_valid(x, taps):
    """Separable 'valid' correlation of (..., H, W) with outer(taps, taps) -> (..., H-k+1, W-k+1)."""
    k = len(taps)
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = sum(t * x[..., i:i + h, :] for i, t in enumerate(taps))
    return sum(t * rows[..., :, i:i + w] for i, t in enumerate(taps))


def ssim(pred, target, mask=None):
    """Structural similarity per band (C,), in [-1, 1]; 1 for identical images.

    Images are min-max scaled as in :func:`psnr` (data range L = 1), then
    ``SSIM = (2 mu_p mu_t + C1)(2 s_pt + C2) / ((mu_p^2 + mu_t^2 + C1)(s_p^2 + s_t^2 + C2))``
    with local Gaussian-weighted means, variances and covariance (11x11 window, sigma 1.5,
    C1 = (0.01 L)^2, C2 = (0.03 L)^2), evaluated at every position where the window fits
    inside the image ('valid'). Each image's SSIM is the mean over its positions (with a mask:
    over the positions whose whole window is valid); a band's score is the mean over images.
    """
    pred, target = _pair("ssim", pred, target, 3)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images of {pred.shape[-2:]} pixels are smaller than the "
                         f"{SSIM_WINDOW}x{SSIM_WINDOW} window")
    mask = _mask("ssim", mask, pred.shape)
    p, t = _scale_to_target(pred, target, mask)
    g = _gaussian_taps()
    mu_p, mu_t = _filter_valid(p, g), _filter_valid(t, g)
    var_p = np.maximum(_filter_valid(p * p, g) - mu_p ** 2, 0)
    var_t = np.maximum(_filter_valid(t * t, g) - mu_t ** 2, 0)
    cov = _filter_valid(p * t, g) - mu_p * mu_t
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    smap = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)
            / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2)))
    box = np.full(SSIM_WINDOW, 1.0 / SSIM_WINDOW)
    whole = _filter_valid(mask.astype(np.float64), box) > 1 - 1e-9  # window entirely valid
    per_image = _ratio(np.where(whole, smap, 0).sum((-2, -1)), whole.sum((-2, -1)))  # (..., C)
    scored = np.isfinite(per_image)
    axes = tuple(range(per_image.ndim - 1))
    return _ratio(np.where(scored, per_image, 0).sum(axes), scored.sum(axes))


# ---------------------------------------------------------------------------- classification

def confusion_matrix(pred, target, num_classes=None, mask=None):
    """(K, K) int64 counts; row = true class, column = predicted class.

    ``pred`` / ``target`` hold class *indices* in [0, K) of the same shape (map raw codes with
    ``modality.codec.index_of``); K defaults to the largest index + 1.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: pred has shape {pred.shape} but target has shape "
                         f"{target.shape}; pass label maps of the same shape")
    mask = _mask("confusion_matrix", mask, pred.shape)
    p, t = pred[mask], target[mask]
    for name, x in (("pred", p), ("target", t)):
        if x.size and (np.any(x != np.round(x)) or x.min() < 0):
            raise ValueError(f"confusion_matrix: {name} must hold non-negative integer class "
                             "indices (map raw class codes with codec.index_of first)")
    p, t = p.astype(np.int64), t.astype(np.int64)
    k = num_classes if num_classes is not None else int(max(p.max(initial=-1), t.max(initial=-1)) + 1)
    if p.size and max(p.max(), t.max()) >= k:
        raise ValueError(f"confusion_matrix: class index {max(p.max(), t.max())} is outside "
                         f"[0, {k}); raise num_classes or fix the labels")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _confusion(fn, pred, target, num_classes, mask):
    """Labels -> confusion matrix; with ``target=None``, ``pred`` already is one."""
    if target is not None:
        return confusion_matrix(pred, target, num_classes, mask).astype(np.float64)
    cm = np.asarray(pred, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or (cm < 0).any():
        raise ValueError(f"{fn}: with target=None the first argument must be a (K, K) confusion "
                         f"matrix of non-negative counts, got shape {cm.shape}")
    return cm


def _iou_terms(cm):
    tp = np.diag(cm)
    return tp, cm.sum(0) - tp, cm.sum(1) - tp  # tp, fp, fn


def class_accuracy(pred, target=None, num_classes=None, mask=None):
    """Top-1 pixel accuracy: correctly labelled valid pixels / valid pixels.

    Every class metric takes either label maps ``(pred, target)`` or one confusion matrix
    (``target=None``), so counts can be accumulated over many images first.
    """
    cm = _confusion("class_accuracy", pred, target, num_classes, mask)
    return float(_ratio(np.trace(cm), cm.sum()))


def miou(pred, target=None, num_classes=None, mask=None):
    """Mean over classes of IoU = TP / (TP + FP + FN); classes absent from both pred and target
    (TP + FP + FN = 0) are left out. Class 0 is an ordinary class."""
    tp, fp, fn = _iou_terms(_confusion("miou", pred, target, num_classes, mask))
    seen = tp + fp + fn > 0
    return float(np.mean(tp[seen] / (tp + fp + fn)[seen])) if seen.any() else float("nan")


def mean_f1(pred, target=None, num_classes=None, mask=None):
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN), over the classes :func:`miou` keeps."""
    tp, fp, fn = _iou_terms(_confusion("mean_f1", pred, target, num_classes, mask))
    seen = tp + fp + fn > 0
    return float(np.mean(2 * tp[seen] / (2 * tp + fp + fn)[seen])) if seen.any() else float("nan")


def fw_iou(pred, target=None, num_classes=None, mask=None):
    """Frequency-weighted IoU: sum_c n_c IoU_c / sum_c n_c, n_c = true pixels of class c
    (class 0 included)."""
    cm = _confusion("fw_iou", pred, target, num_classes, mask)
    tp, fp, fn = _iou_terms(cm)
    iou = _ratio(tp, tp + fp + fn)
    n = cm.sum(1)
    return float(_ratio(np.sum(np.where(n > 0, n * iou, 0)), n.sum()))


# ---------------------------------------------------------------------------- location and date

def haversine_km(pred, target):
    """Great-circle distance in km (sphere of radius 6371 km) between (..., 2) [lat, lon]
    degree arrays (shapes broadcast) -> (...)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape[-1:] != (2,) or target.shape[-1:] != (2,):
        raise ValueError(f"haversine_km: expected (..., 2) [lat, lon] arrays in degrees, got "
                         f"{pred.shape} and {target.shape}")
    lat1, lon1 = np.radians(pred[..., 0]), np.radians(pred[..., 1])
    lat2, lon2 = np.radians(target[..., 0]), np.radians(target[..., 1])
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def within_km_accuracy(pred, target, thresholds=(1, 10, 50, 100, 500)):
    """{threshold_km: share of locations with haversine error <= threshold_km}."""
    d = np.ravel(haversine_km(pred, target))
    return {t: float(np.mean(d <= t)) for t in thresholds}


def _days(fn, x):
    try:
        x = np.asarray(x).astype("datetime64[D]")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{fn}: expected datetime64 dates (or ISO 'YYYY-MM-DD' strings): {e}") from None
    if np.isnat(x).any():
        raise ValueError(f"{fn}: dates contain NaT; drop missing dates before scoring")
    return x


def _date_pair(fn, pred, target):
    pred, target = _days(fn, pred), _days(fn, target)
    if pred.shape != target.shape:
        raise ValueError(f"{fn}: pred has shape {pred.shape} but target has shape {target.shape}")
    return pred, target


def day_error(pred, target):
    """Absolute error in days per element (float64 array of the inputs' shape)."""
    pred, target = _date_pair("day_error", pred, target)
    return np.abs((pred - target).astype(np.int64)).astype(np.float64)


def month_accuracy(pred, target):
    """Share of dates whose calendar month (1-12, year ignored) is right."""
    pred, target = _date_pair("month_accuracy", pred, target)
    return float(np.mean(_month(pred) == _month(target)))


def year_accuracy(pred, target):
    """Share of dates whose year is right."""
    pred, target = _date_pair("year_accuracy", pred, target)
    return float(np.mean(_year(pred) == _year(target)))


def _month(days):
    return days.astype("datetime64[M]").astype(np.int64) % 12


def _year(days):
    return days.astype("datetime64[Y]").astype(np.int64)


# ---------------------------------------------------------------------------- calibration

def _ensemble(fn, truth, samples):
    truth, samples = np.asarray(truth, np.float64), np.asarray(samples, np.float64)
    if samples.shape[1:] != truth.shape or samples.shape[0] < 1:
        raise ValueError(f"{fn}: samples must be (M, *truth.shape) = (M, {', '.join(map(str, truth.shape))}) "
                         f"with the ensemble on axis 0, got {samples.shape}")
    return truth, samples


def interval_coverage(truth, samples, lo=5, hi=95, mask=None, seed=0):
    """Share of valid true values inside the [lo, hi] percentile interval of their ensemble
    ``samples`` (M, *truth.shape), by rank: inside when the truth's randomised PIT
    (:func:`pit_values`) lies in [lo / 100, hi / 100]. A calibrated ensemble scores
    (hi - lo) / 100 in expectation whatever its size M; the interval between the M members'
    own percentiles would cover only about (hi - lo) / 100 (M - 1) / (M + 1) (0.70 for [5, 95]
    with 8 members). Few members resolve little beyond their own range, though: 8 members far
    too narrow still score about 0.6 for [5, 95], so read it beside the PIT histogram. Where
    every member is the same value the interval is that value: a point forecast covers only its
    exact hits."""
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"interval_coverage: need 0 <= lo < hi <= 100, got lo={lo}, hi={hi}")
    truth, samples = _ensemble("interval_coverage", truth, samples)
    mask = _mask("interval_coverage", mask, truth.shape)
    inside = _inside_by_rank(truth, samples, lo / 100, hi / 100, seed)
    return float(_ratio(inside[mask].sum(), mask.sum()))


def _inside_by_rank(truth, samples, lo, hi, seed):
    """Per pixel, whether the truth's randomised PIT is in [lo, hi] (arrays broadcast against
    ``truth.shape``); where all members agree, whether the truth is exactly that value."""
    pit = pit_values(truth, samples, seed)
    point = (samples == samples[0]).all(0)
    return np.where(point, samples[0] == truth, (lo <= pit) & (pit <= hi))


def crps(truth, samples, mask=None):
    """Mean ensemble CRPS over valid pixels, in the data's units (lower is better).

    Per pixel ``CRPS = E|X - y| - 0.5 E|X - X'|`` with X, X' independent draws from the
    M-member empirical distribution (the plain estimator: both expectations average all M and
    M^2 pairs, so it is the exact CRPS of the ensemble's step CDF, not the 'fair' M(M-1)
    variant). For M = 1 (a point forecast) it equals the absolute error, so the mean is the MAE.
    """
    truth, samples = _ensemble("crps", truth, samples)
    mask = _mask("crps", mask, truth.shape)
    m = samples.shape[0]
    spread_to_truth = np.abs(samples - truth).mean(0)
    # sum_ij |x_i - x_j| = 2 sum_i (2i - m - 1) x_(i) over the sorted members, O(M log M).
    weights = (2 * np.arange(1, m + 1) - m - 1).reshape((m,) + (1,) * truth.ndim)
    mean_pair_gap = 2 * (weights * np.sort(samples, axis=0)).sum(0) / m ** 2
    score = spread_to_truth - 0.5 * mean_pair_gap
    return float(_ratio(score[mask].sum(), mask.sum()))


RELIABILITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PIT_BINS = 10


def reliability(truth, samples, levels=RELIABILITY_LEVELS, mask=None, seed=0):
    """Empirical coverage of each central interval: (L,) float64, one share per nominal ``level``:
    :func:`interval_coverage` of [50 - 50 p, 50 + 50 p] for each level p, so a calibrated
    ensemble of any size covers p, an under-dispersed one less, a point forecast its exact hits."""
    levels = np.asarray(levels, np.float64)
    if levels.ndim != 1 or not levels.size or ((levels < 0) | (levels > 1)).any():
        raise ValueError(f"reliability: levels must be a non-empty 1-D list of nominal masses in [0, 1], "
                         f"got {levels.tolist()}")
    truth, samples = _ensemble("reliability", truth, samples)
    mask = _mask("reliability", mask, truth.shape)
    half = levels.reshape((-1,) + (1,) * truth.ndim) / 2
    inside = _inside_by_rank(truth, samples, 0.5 - half, 0.5 + half, seed)  # (L, *truth.shape)
    return _ratio(inside[:, mask].sum(1), mask.sum())


def pit_values(truth, samples, seed=0) -> np.ndarray:
    """The truth's randomised rank among its M members, per pixel, in [0, 1] (``truth.shape``):
    ``(#{x_i < y} + U (#{x_i = y} + 1)) / (M + 1)``, U uniform on [0, 1) (``default_rng(seed)``).
    Uniform on [0, 1] when the truth is exchangeable with the members, whatever M."""
    below, ties = (samples < truth).sum(0), (samples == truth).sum(0)
    u = np.random.default_rng(seed).random(truth.shape)
    return (below + u * (ties + 1)) / (samples.shape[0] + 1)


def pit_histogram(truth, samples, bins=PIT_BINS, mask=None, seed=0):
    """Histogram of the probability integral transform over valid pixels: (bins,) float64
    fractions of [0, 1] in equal bins, summing to 1 (NaN when no pixel is valid).

    The PIT of an M-member ensemble is the truth's randomised rank among the M + 1 values
    (truth and members, :func:`pit_values`). When the truth is exchangeable with
    the members its rank is uniform on 0..M and the PIT uniform on [0, 1]: a flat histogram
    (1 / bins per bin). Too narrow an ensemble piles the PIT at both ends (U-shaped), too wide
    a one in the middle, a biased one at one end. A point forecast (identical members) puts
    every pixel it misses within 1 / (M + 1) of 0 or 1, and spreads exact hits (ties) uniformly.
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"pit_histogram: bins must be a positive integer, got {bins}")
    truth, samples = _ensemble("pit_histogram", truth, samples)
    mask = _mask("pit_histogram", mask, truth.shape)
    counts = np.histogram(pit_values(truth, samples, seed)[mask], bins=int(bins), range=(0.0, 1.0))[0]
    return _ratio(counts, mask.sum())
