"""Set-to-set metrics for the stochastic benchmark, and the embeddings they run on.

A *set* is an (N, D) float array: N samples (images) embedded as D-vectors by
:func:`spectra_embedding` or :func:`structure_embedding`. Distances are Euclidean, computed
exactly (no Gram-matrix cancellation) and in float64. Set metrics return NaN when a set is
too small for the statistic (fewer than 2 samples where pairs are needed), and raise on
malformed input.
"""
from __future__ import annotations

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # bound on the (rows, M, D) difference block held at once
_PYRAMID_GRIDS = (1, 2, 4)
_SCALES = 3
STRUCTURE_FEATURES_PER_BAND = 2 * sum(g * g for g in _PYRAMID_GRIDS) + 3 * _SCALES  # 51


# ---------------------------------------------------------------------------- helpers

def _set(fn, x, name):
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{fn}: {name} must be an (N, D) array of N embedded samples, got "
                         f"shape {x.shape}; embed images first (spectra_embedding, structure_embedding)")
    if not np.isfinite(x).all():
        raise ValueError(f"{fn}: {name} contains NaN or inf values")
    return x


def _sets(fn, real, fake):
    real, fake = _set(fn, real, "real"), _set(fn, fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"{fn}: real has D={real.shape[1]} features but fake has "
                         f"D={fake.shape[1]}; embed both sets in the same space")
    return real, fake


def _distances(a, b):
    """(N, M) Euclidean distances, exact differences taken in row chunks to bound memory."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, b.size))
    return np.concatenate([np.sqrt(((a[i:i + rows, None] - b[None]) ** 2).sum(-1))
                           for i in range(0, len(a), rows)] or [np.zeros((0, len(b)))])


def _pair_distances(x):
    """Distances of the N(N-1)/2 unordered pairs of distinct samples of x."""
    return _distances(x, x)[np.triu_indices(len(x), k=1)]


def _knn_radius(x, k):
    """Distance from each sample to its k-th nearest neighbour in x, itself excluded
    (k is capped at N - 1 for small sets)."""
    d = _distances(x, x)
    np.fill_diagonal(d, np.inf)
    k = min(k, len(x) - 1)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


# ---------------------------------------------------------------------------- set metrics

def precision_recall(real, fake, k=5):
    """Manifold precision and recall with k-NN balls (Kynkaanniemi et al. 2019).

    Each real sample owns a ball whose radius is the distance to its k-th nearest *other* real
    sample (k capped at N - 1); precision is the share of fake samples inside at least one real
    ball (closed balls). Recall is the same with the roles swapped: the share of real samples
    inside a fake sample's k-NN ball. Returns (precision, recall) in [0, 1]; NaN if either set
    has fewer than 2 samples.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"precision_recall: k must be a positive integer, got {k}")
    real, fake = _sets("precision_recall", real, fake)
    if len(real) < 2 or len(fake) < 2:
        return float("nan"), float("nan")
    d = _distances(fake, real)  # (M, N)
    precision = np.mean((d <= _knn_radius(real, k)[None, :]).any(1))
    recall = np.mean((d.T <= _knn_radius(fake, k)[None, :]).any(1))
    return float(precision), float(recall)


def nn_accuracy(real, fake):
    """Leave-one-out 1-NN two-sample accuracy on the pooled set: the share of samples whose
    nearest other sample comes from the same set (ties go to the lower pooled index, reals
    first). 0.5 when the sets are indistinguishable, 1 when fully separated."""
    real, fake = _sets("nn_accuracy", real, fake)
    if len(real) == 0 or len(fake) == 0:
        return float("nan")
    pool = np.concatenate([real, fake])
    label = np.arange(len(pool)) >= len(real)
    d = _distances(pool, pool)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(label[d.argmin(1)] == label))


def mmd(real, fake, sigma=None):
    """Unbiased squared maximum mean discrepancy with an RBF kernel.

    ``k(x, y) = exp(-|x - y|^2 / (2 sigma^2))``; by default sigma is half the median distance
    between distinct pooled samples (+1e-8 so duplicate-only sets keep a valid kernel).
    ``MMD^2 = mean_{i!=j} k(r_i, r_j) + mean_{i!=j} k(f_i, f_j) - 2 mean_{i,j} k(r_i, f_j)``,
    which is 0 in expectation for equal distributions and can be slightly negative.
    NaN if either set has fewer than 2 samples.
    """
    real, fake = _sets("mmd", real, fake)
    n, m = len(real), len(fake)
    if n < 2 or m < 2:
        return float("nan")
    if sigma is None:
        sigma = np.median(_pair_distances(np.concatenate([real, fake]))) / 2 + 1e-8
    elif not sigma > 0:
        raise ValueError(f"mmd: sigma must be positive, got {sigma}")
    kernel = lambda a, b: np.exp(-_distances(a, b) ** 2 / (2 * sigma ** 2))
    k_rr, k_ff = kernel(real, real), kernel(fake, fake)
    within = lambda k, s: (k.sum() - np.trace(k)) / (s * (s - 1))
    return float(within(k_rr, n) + within(k_ff, m) - 2 * kernel(real, fake).mean())


def wasserstein_per_band(real, fake):
    """Exact 1-D Wasserstein-1 distance between the empirical distributions of each column,
    ``W1 = int_0^1 |F^-1(q) - G^-1(q)| dq`` (= int |F - G|); sets may differ in size. (D,)."""
    real, fake = _sets("wasserstein_per_band", real, fake)
    n, m = len(real), len(fake)
    if n == 0 or m == 0:
        return np.full(real.shape[1], np.nan)
    # Both quantile functions are constant between consecutive points of {i/n} u {j/m}.
    q = np.unique(np.concatenate([[0.0], np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    mid = (q[:-1] + q[1:]) / 2
    u = np.sort(real, 0)[np.minimum((mid * n).astype(np.int64), n - 1)]
    v = np.sort(fake, 0)[np.minimum((mid * m).astype(np.int64), m - 1)]
    return (np.diff(q)[:, None] * np.abs(u - v)).sum(0)


def spectral_range_coverage(real, fake):
    """Per column: the share of the real [min, max] covered by the fake [min, max],
    ``|[r_min, r_max] n [f_min, f_max]| / (r_max - r_min)`` in [0, 1]. On per-image band means
    (:func:`band_means`) it is the SPEC's spectral range coverage. A column where the real set
    is constant scores 1 if the fake interval contains that value, else 0. (D,)."""
    real, fake = _sets("spectral_range_coverage", real, fake)
    if len(real) == 0 or len(fake) == 0:
        return np.full(real.shape[1], np.nan)
    r_lo, r_hi, f_lo, f_hi = real.min(0), real.max(0), fake.min(0), fake.max(0)
    overlap = np.clip(np.minimum(r_hi, f_hi) - np.maximum(r_lo, f_lo), 0, None)
    span = r_hi - r_lo
    point_inside = (f_lo <= r_lo) & (r_hi <= f_hi)
    return np.where(span > 0, overlap / np.where(span > 0, span, 1), point_inside.astype(np.float64))


def intra_set_distance(x):
    """Mean Euclidean distance over the unordered pairs of distinct samples of one (N, D) set
    (a diversity measure); NaN if N < 2."""
    x = _set("intra_set_distance", x, "x")
    return float(_pair_distances(x).mean()) if len(x) >= 2 else float("nan")


# ---------------------------------------------------------------------------- images -> sets

def _images(fn, images):
    images = np.asarray(images, np.float64)
    if images.ndim < 3:
        raise ValueError(f"{fn}: expected (..., C, H, W) images, got shape {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError(f"{fn}: images contain NaN or inf values")
    return images


def band_means(images, zeros_excluded=True):
    """Per-image mean of each band: (..., C, H, W) -> (..., C). With ``zeros_excluded`` pixels
    equal to 0 (nodata) are left out; a band with no non-zero pixel gets 0."""
    images = _images("band_means", images)
    valid = images != 0 if zeros_excluded else np.ones(images.shape, bool)
    count = valid.sum((-2, -1))
    return np.where(count > 0, images.sum((-2, -1)) / np.maximum(count, 1), 0.0)


def valid_real_image(img, band_index, min_nonzero=0.95):
    """Whether an image keeps at least ``min_nonzero`` of its ``band_index`` pixels non-zero
    (the benchmark's filter on B02). (..., C, H, W) -> bool per image."""
    img = np.asarray(img)
    if img.ndim < 3 or not -img.shape[-3] <= band_index < img.shape[-3]:
        raise ValueError(f"valid_real_image: need (..., C, H, W) images with band {band_index}, "
                         f"got shape {img.shape}")
    band = img[..., band_index, :, :]
    ok = np.count_nonzero(band, axis=(-2, -1)) >= min_nonzero * band.shape[-2] * band.shape[-1]
    return bool(ok) if ok.ndim == 0 else ok


def spectra_embedding(images):
    """The spectral embedding: per-image band means with zeros excluded, (..., C)."""
    return band_means(images, zeros_excluded=True)


def _pool2(x):
    """2x2 average pooling over the last two axes (an odd last row / column is dropped)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return x[..., :2 * h, :2 * w].reshape(*x.shape[:-2], h, 2, w, 2).mean((-3, -1))


def _grid_stats(x, g):
    """Mean and std over a g x g grid of near-equal cells: (..., H, W) -> 2 x (..., g^2)."""
    r = np.linspace(0, x.shape[-2], g + 1).astype(np.int64)
    c = np.linspace(0, x.shape[-1], g + 1).astype(np.int64)
    cell_sum = lambda y: np.add.reduceat(np.add.reduceat(y, r[:-1], -2), c[:-1], -1)
    count = np.outer(np.diff(r), np.diff(c))
    mean = cell_sum(x) / count
    std = np.sqrt(np.maximum(cell_sum(x * x) / count - mean ** 2, 0))
    return mean.reshape(*x.shape[:-2], -1), std.reshape(*x.shape[:-2], -1)


def structure_embedding(images):
    """A fixed, weight-free multi-scale descriptor of image structure, (N, C, H, W) -> (N, 51 C).

    Per band, in the images' own units (so one Euclidean scale weighs every feature):
      * spatial pyramid over 1x1, 2x2 and 4x4 grids of cells (row-major): the 21 cell means,
        then the 21 cell standard deviations (coarse layout and local contrast);
      * at scales s = 0, 1, 2 (2^s x 2^s average pooling): mean |vertical| and |horizontal|
        finite difference and the RMS of the band-pass residual x_s - upsample(pool(x_s))
        (9 values: edge strength, orientation balance and texture energy per octave).
    Features are band-major ([band 0's 51, band 1's 51, ...]); images need H, W >= 8.
    Deterministic: no random numbers, no learned weights.
    """
    images = _images("structure_embedding", images)
    if images.ndim != 4 or min(images.shape[-2:]) < 2 ** _SCALES:
        raise ValueError(f"structure_embedding: expected (N, C, H, W) images with H, W >= "
                         f"{2 ** _SCALES}, got shape {images.shape}")
    means, stds = zip(*(_grid_stats(images, g) for g in _PYRAMID_GRIDS))
    feats = [*means, *stds]
    x = images
    for _ in range(_SCALES):
        coarse = _pool2(x)
        up = np.repeat(np.repeat(coarse, 2, -2), 2, -1)
        band_pass = x[..., :up.shape[-2], :up.shape[-1]] - up
        feats.append(np.stack([np.abs(np.diff(x, axis=-2)).mean((-2, -1)),
                               np.abs(np.diff(x, axis=-1)).mean((-2, -1)),
                               np.sqrt((band_pass ** 2).mean((-2, -1)))], -1))
        x = coarse
    return np.concatenate(feats, -1).reshape(len(images), -1)
