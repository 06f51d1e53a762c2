"""Classification metrics at p = 0.5 (scikit-learn) with percentile-bootstrap 95% confidence intervals."""

from __future__ import annotations

import math

import numpy as np
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


def bootstrap_metrics(label: np.ndarray, probability: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Each metric's value and 95% percentile-bootstrap CI (cases resampled with replacement, seeded).

    Resamples in which a metric is undefined (one class only) are left out of that metric's interval.
    """
    label, probability = np.asarray(label).astype(int), np.asarray(probability, dtype=float)
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in METRICS}
    for _ in range(n_boot):
        idx = rng.integers(0, len(label), len(label))
        for k, v in point_metrics(label[idx], probability[idx], threshold).items():
            samples[k].append(v)
    point = point_metrics(label, probability, threshold)
    out = {}
    for k in METRICS:
        s = np.array(samples[k], dtype=float)
        s = s[np.isfinite(s)]
        lo, hi = (np.percentile(s, [2.5, 97.5]) if s.size else (math.nan, math.nan))
        out[k] = {"value": point[k], "ci_low": float(lo), "ci_high": float(hi), "n_boot": int(s.size)}
    return out
