"""Evaluation metrics: plain functions of NumPy arrays, float64 inside.

Pointwise (one prediction against its truth; SPEC section 6, "Pointwise"), in physical
evaluation units (S2 reflectance = DN / 1e4, S1 in dB, DEM in metres), per band over
(..., C, H, W) images, with an optional boolean ``mask`` (True = valid pixel):
  mae, rmse            pooled over images and pixels, in the data's units
  psnr, ssim           after min-max scaling both images to the target's per-image, per-band
                       range (data range 1); SSIM with an 11x11 Gaussian window, sigma 1.5
  confusion_matrix, class_accuracy, miou, mean_f1, fw_iou
                       on class-index maps or an accumulated confusion matrix (class 0 counts)
  haversine_km, within_km_accuracy (1/10/50/100/500 km)       on (..., 2) [lat, lon] degrees
  day_error, month_accuracy, year_accuracy                     on datetime64 dates

Calibration (an ensemble of M samples on axis 0 against the truth):
  interval_coverage    share of true values inside the per-pixel [5, 95] % sample interval
  crps                 ensemble CRPS, E|X - y| - 0.5 E|X - X'| (equals MAE for M = 1)
  reliability          coverage of the central interval of each nominal mass 0.1 .. 0.9 (rank-based:
                       a calibrated ensemble covers the mass itself, whatever its size)
  pit_histogram        histogram of the truth's randomised rank among the samples (PIT; flat
                       when calibrated, U-shaped when the samples are too narrow)

Distributional (stochastic benchmark; sets are (N, D) arrays of embedded images):
  precision_recall (k-NN balls, k = 5), nn_accuracy (1-NN leave-one-out, 0.5 ideal),
  mmd (unbiased RBF MMD^2, sigma = median pairwise distance / 2), wasserstein_per_band,
  spectral_range_coverage, intra_set_distance; and valid_real_image, the benchmark's filter
  on real observations (>= 95 % non-zero pixels in one band, B02 in the reference).

Embedding spaces (both deterministic; neither needs downloaded weights):
  spectra_embedding    per-image band means with zero (nodata) pixels excluded, (N, C) in the
                       images' units: the space of the SPEC's "12-band spectra" numbers when
                       S2 is given as reflectance (DN / 1e4). band_means computes it, with
                       zeros optionally kept.
  structure_embedding  a multi-scale structure descriptor, (N, 51 C): per band a 1/2/4 spatial
                       pyramid of cell means and stds, plus mean absolute gradients and
                       band-pass (Laplacian-pyramid) energy at three octaves. It stands in for
                       the reference's ImageNet ResNet-50 embedding of RGB, whose weights are not
                       available here, so its numbers are comparable between models evaluated
                       here but not with the paper's ResNet-50 column.
"""
from copgen_jax.evaluate.metrics.distribution import (
    STRUCTURE_FEATURES_PER_BAND, band_means, intra_set_distance, mmd, nn_accuracy,
    precision_recall, spectra_embedding, spectral_range_coverage, structure_embedding,
    valid_real_image, wasserstein_per_band)
from copgen_jax.evaluate.metrics.pointwise import (
    EARTH_RADIUS_KM, PIT_BINS, RELIABILITY_LEVELS, class_accuracy, confusion_matrix, crps, day_error,
    fw_iou, haversine_km, interval_coverage, mae, mean_f1, miou, month_accuracy, pit_histogram, pit_values, psnr,
    reliability, rmse, ssim, within_km_accuracy, year_accuracy)

__all__ = [
    # pointwise
    "mae", "rmse", "psnr", "ssim",
    "confusion_matrix", "class_accuracy", "miou", "mean_f1", "fw_iou",
    "haversine_km", "within_km_accuracy", "EARTH_RADIUS_KM",
    "day_error", "month_accuracy", "year_accuracy",
    # calibration
    "interval_coverage", "crps", "reliability", "pit_histogram", "pit_values", "RELIABILITY_LEVELS", "PIT_BINS",
    # distributional
    "precision_recall", "nn_accuracy", "mmd", "wasserstein_per_band",
    "spectral_range_coverage", "intra_set_distance", "valid_real_image",
    # embeddings
    "band_means", "spectra_embedding", "structure_embedding", "STRUCTURE_FEATURES_PER_BAND",
]
