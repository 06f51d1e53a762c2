"""Classification metrics at p = 0.5 (scikit-learn) with percentile-bootstrap 95% confidence intervals."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")
COLUMNS = ("Accuracy", "Sensitivity", "Specificity", "F1", "AUC")


def table_header(extra: tuple[str, ...] = ()) -> str:
    """Table 1's header (two markdown lines): Method, the metrics of :data:`METRICS`, then ``extra`` columns."""
    names = ("Method", *COLUMNS, *extra)
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


TABLE_HEADER = table_header()


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


def metric_cell(m: dict | None) -> str:
    """value [95% CI] to 3 decimals; n/a when absent or undefined."""
    if m is None or not math.isfinite(m["value"]):
        return "n/a"
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def table_row(name: str, metrics: dict, extra: tuple[dict | None, ...] = ()) -> str:
    """One Table-1 row: value [95% CI] per metric, then the ``extra`` cells (see :func:`table_header`)."""
    return f"| {name} | " + " | ".join(metric_cell(m) for m in [*(metrics[k] for k in METRICS), *extra]) + " |"
