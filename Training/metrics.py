"""Calibration metrics (ECE, MCE, Brier, NLL) with bootstrap 95% confidence intervals, BCa for ECE and MCE (Table 1's
classification metrics: :mod:`BreastCMSLLib.cohort.metrics`)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit
from scipy.stats import DegenerateDataWarning, bootstrap

CALIBRATION_METRICS = ("ece", "mce", "brier", "nll")
BIASED = ("ece", "mce")  # binned plug-in estimates, biased upward at small n: BCa intervals
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
    """Each calibration metric's value on the cases as given and its 95 % bootstrap CI (cases resampled, seeded).

    Brier and NLL are means of per-case losses: percentile interval (``"interval": "percentile"``). ECE and MCE
    are binned plug-in estimates, biased upward at small n (the gap of a sparsely filled bin is mostly noise),
    so their percentile interval can lie above the estimate itself; for them the interval is BCa
    (``scipy.stats.bootstrap``, ``"interval": "BCa"``) and ``"debiased"`` is BCa's bias-corrected estimate (the
    BCa interval at level 0: the bootstrap quantile at Phi(z0 + z0 / (1 - a z0))), which lies inside the
    interval by construction; ``"value"`` stays the plug-in estimate (the reliability diagram's)."""
    idx = np.random.default_rng(seed).integers(0, len(label), (n_boot, len(label)))
    samples = replicate_calibration(label, score, idx, temperature)
    point = calibration_metrics(label, score, temperature)
    out = {}
    for k in CALIBRATION_METRICS:
        if k in BIASED:
            out[k] = {"value": point[k], **_bca(label, score, temperature, k, n_boot, seed), "n_boot": n_boot}
        else:
            out[k] = {"value": point[k], "ci_low": float(np.percentile(samples[k], 2.5)),
                      "ci_high": float(np.percentile(samples[k], 97.5)), "interval": "percentile", "n_boot": n_boot}
    return out


def _bca(label: np.ndarray, score: np.ndarray, temperature: float, key: str, n_boot: int, seed: int) -> dict:
    """BCa 95 % interval and bias-corrected estimate of one calibration metric (NaN where the bootstrap
    distribution is degenerate, e.g. every resample gives the same value)."""
    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        index = np.moveaxis(np.asarray(index).astype(int), axis, -1)
        flat = index.reshape(-1, index.shape[-1])
        return replicate_calibration(label, score, flat, temperature)[key].reshape(index.shape[:-1])

    data = (np.arange(len(label)),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateDataWarning)
        ci = bootstrap(data, statistic, vectorized=True, n_resamples=n_boot, method="BCa",
                       rng=np.random.default_rng(seed))
        mid = bootstrap(data, statistic, vectorized=True, n_resamples=0, method="BCa", confidence_level=0.0,
                        bootstrap_result=ci, rng=np.random.default_rng(seed))
    return {"debiased": float(mid.confidence_interval.low), "ci_low": float(ci.confidence_interval.low),
            "ci_high": float(ci.confidence_interval.high), "interval": "BCa"}


def shown(metric: dict | None) -> dict | None:
    """The estimate a table shows with the interval: the bias-corrected one where there is one (ECE, MCE)."""
    if metric is None or "debiased" not in metric:
        return metric
    return {**metric, "value": metric["debiased"]}
