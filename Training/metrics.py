"""Classification metrics at a threshold (scikit-learn) and calibration metrics (ECE, MCE, Brier, NLL), with
percentile-bootstrap 95% confidence intervals."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def safe_auc(label: np.ndarray, probability: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present."""
    label = np.asarray(label)
    return float(roc_auc_score(label, probability)) if len(np.unique(label)) == 2 else math.nan


def point_metrics(label: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity (recall of 1), specificity (recall of 0), F1 and AUC; prediction p >= threshold."""
    label = np.asarray(label).astype(int)
    pred = (np.asarray(probability) >= threshold).astype(int)
    has = set(np.unique(label).tolist())
    return {
        "accuracy": float(accuracy_score(label, pred)),
        "sensitivity": float(recall_score(label, pred, pos_label=1, zero_division=0)) if 1 in has else math.nan,
        "specificity": float(recall_score(label, pred, pos_label=0, zero_division=0)) if 0 in has else math.nan,
        "f1": float(f1_score(label, pred, pos_label=1, zero_division=0)),
        "auc": safe_auc(label, probability),
    }


def replicate_metrics(label: np.ndarray, probability: np.ndarray, idx: np.ndarray,
                      threshold: float = 0.5) -> dict[str, np.ndarray]:
    """The metrics of :func:`point_metrics` for many resamples at once: ``idx`` (B, n) case indices.

    The same definitions as scikit-learn's, vectorized over resamples (calling scikit-learn per resample is
    slow at 2000 resamples: ``benchmarks/README.md``); AUC is the Mann-Whitney statistic with
    tie-averaged ranks (scipy). A test checks each resample against scikit-learn. NaN where undefined.
    """
    y = np.asarray(label).astype(int)[idx]
    p = np.asarray(probability, dtype=float)[idx]
    pred = p >= threshold
    pos, neg = (y == 1), (y == 0)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    tp, tn = (pred & pos).sum(1), (~pred & neg).sum(1)
    fp, fn = (pred & neg).sum(1), (~pred & pos).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ranks = rankdata(p, axis=1)
        auc = ((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        f1_den = 2 * tp + fp + fn
        return {
            "accuracy": (tp + tn) / y.shape[1],
            "sensitivity": np.where(n_pos > 0, tp / np.maximum(n_pos, 1), np.nan),
            "specificity": np.where(n_neg > 0, tn / np.maximum(n_neg, 1), np.nan),
            "f1": np.where(f1_den > 0, 2 * tp / np.maximum(f1_den, 1), 0.0),
            "auc": np.where((n_pos > 0) & (n_neg > 0), auc, np.nan),
        }


def bootstrap_metrics(label: np.ndarray, probability: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Each metric's value (scikit-learn) and 95% percentile-bootstrap CI (cases resampled with
    replacement, seeded). Resamples in which a metric is undefined (one class) are left out of its CI."""
    label = np.asarray(label).astype(int)
    idx = np.random.default_rng(seed).integers(0, len(label), (n_boot, len(label)))
    samples = replicate_metrics(label, probability, idx, threshold)
    point = point_metrics(label, probability, threshold)
    out = {}
    for k in METRICS:
        s = samples[k][np.isfinite(samples[k])]
        lo, hi = (np.percentile(s, [2.5, 97.5]) if s.size else (math.nan, math.nan))
        out[k] = {"value": point[k], "ci_low": float(lo), "ci_high": float(hi), "n_boot": int(s.size)}
    return out


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
