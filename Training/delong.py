"""DeLong's test for the difference of two correlated ROC AUCs (the same cases scored by two models).

DeLong, DeLong & Clarke-Pearson (Biometrics 1988) estimate the covariance of the AUCs of k models from their
structural components: for model r, each malignant case i has V10_i = P(score of i > score of a benign case)
(ties count 1/2) and each benign case j has V01_j = P(score of a malignant case > score of j); then
S = cov(V10) / m + cov(V01) / n (m malignant, n benign cases) and the difference of two AUCs has variance
c' S c with c = (1, -1). The components are computed from midranks as in Sun & Xu (IEEE Signal Processing
Letters 2014), O((m + n) log(m + n)) instead of O(m n). Written here because neither scipy nor scikit-learn
has the test; checked against scikit-learn's AUC, the components' definition pair by pair, a hand-worked
example, a large-sample bootstrap of the variance and the false-positive rate under the null
(``Testing/test_delong.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class DeLongResult:
    """AUCs of models a and b, their difference a - b, its standard error, z, two-sided p and 95 % CI."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p: float
    ci_low: float
    ci_high: float


def structural_components(label: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC (k,), V10 (k, m), V01 (k, n)) of k score rows ``scores`` (k, cases) against ``label`` (1 malignant).

    Midranks (Sun & Xu 2014): with tz the midrank of a case among all cases, tx among the malignant and ty
    among the benign ones, V10 = (tz - tx) / n over the malignant cases and V01 = 1 - (tz - ty) / m over the
    benign ones; the AUC is the mean of V10."""
    label = np.asarray(label).astype(int)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = scores[:, label == 1], scores[:, label == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError(f"DeLong's test needs both classes (got {m} malignant, {n} benign)")
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (tz[:, :m] - rankdata(pos, axis=1)) / n
    v01 = 1.0 - (tz[:, m:] - rankdata(neg, axis=1)) / m
    return v10.mean(axis=1), v10, v01


def auc_covariance(label: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUC (k,), DeLong covariance matrix (k, k)) of k models scored on the same cases."""
    auc, v10, v01 = structural_components(label, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(auc), len(auc)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(auc), len(auc)))
    return auc, s10 / m + s01 / n


def delong_test(label: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DeLongResult:
    """DeLong's test of AUC(a) = AUC(b) on the same cases (two-sided, normal approximation) and the 95 % Wald
    CI of the difference. A zero variance (e.g. two perfect models) gives p = 1 for a zero difference."""
    auc, cov = auc_covariance(label, np.vstack([score_a, score_b]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    half = float(norm.ppf(0.975)) * se
    return DeLongResult(float(auc[0]), float(auc[1]), diff, se, z, float(2 * norm.sf(abs(z))), diff - half,
                        diff + half)
