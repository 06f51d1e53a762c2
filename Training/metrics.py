"""Calibration metrics (ECE, MCE, Brier, NLL) with percentile-bootstrap 95% confidence intervals (Table 1's
classification metrics: :mod:`BreastCMSLLib.cohort.metrics`)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

CALIBRATION_METRICS = ("ece", "mce", "brier", "nll")
CALIBRATION_BINS = 15  # equal-width bins of the malignancy probability (Guo et al., ICML 2017)


def calibrated_probability(score: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """sigmoid(score / T), float64 (the probability a model file with temperature T reports)."""
    return expit(np.asarray(score, dtype=float) / temperature)


def bin_index(probability: np.ndarray, n_bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Bin k of [k / n, (k + 1) / n), p = 1 in the last bin."""
    return np.minimum((np.asarray(probability) * n_bins).astype(int), n_bins - 1)


def replicate_calibration(label: np.ndarray, score: np.ndarray, idx: np.ndarray, temperature: float = 1.0,
                          n_bins: int = CALIBRATION_BINS) -> dict[str, np.ndarray]:
    """ECE, MCE, Brier score and NLL of p = sigmoid(score / T) for many resamples at once (``idx`` (B, n)).

    ECE = sum over bins of (cases in bin / n) |mean p - fraction malignant|; MCE = the largest such gap
    over non-empty bins; Brier = mean (p - y)^2; NLL = mean -log p(y) from the score (exact where p
    rounds to 0 or 1). The probability is the malignancy probability, as in torchmetrics'
    BinaryCalibrationError and MONAI's calibration metric on the positive class.
    """
    y = np.asarray(label).astype(float)[idx]
    z = np.asarray(score, dtype=float)[idx] / temperature
    p = expit(z)
    n_resamples = idx.shape[0]
    flat = (bin_index(p, n_bins) + n_bins * np.arange(n_resamples)[:, None]).ravel()
    size = n_resamples * n_bins

    def per_bin(weights: np.ndarray | None) -> np.ndarray:
        return np.bincount(flat, weights=weights, minlength=size).reshape(n_resamples, n_bins)

    count, gap = per_bin(None), np.abs(per_bin(p.ravel()) - per_bin(y.ravel()))
    return {
        "ece": gap.sum(1) / y.shape[1],
        "mce": (gap / np.maximum(count, 1)).max(1),
        "brier": ((p - y) ** 2).mean(1),
        "nll": (y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)).mean(1),
    }


def calibration_metrics(label: np.ndarray, score: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """The metrics of :func:`replicate_calibration` on the cases as given."""
    idx = np.arange(len(label))[None]
    return {k: float(v[0]) for k, v in replicate_calibration(label, score, idx, temperature).items()}


def bootstrap_calibration(label: np.ndarray, score: np.ndarray, temperature: float = 1.0, n_boot: int = 2000,
                          seed: int = 0) -> dict[str, dict[str, float]]:
    """Each calibration metric's value and 95 % percentile-bootstrap CI (cases resampled, seeded)."""
    idx = np.random.default_rng(seed).integers(0, len(label), (n_boot, len(label)))
    samples = replicate_calibration(label, score, idx, temperature)
    point = calibration_metrics(label, score, temperature)
    return {k: {"value": point[k], "ci_low": float(np.percentile(samples[k], 2.5)),
                "ci_high": float(np.percentile(samples[k], 97.5)), "n_boot": n_boot} for k in CALIBRATION_METRICS}
