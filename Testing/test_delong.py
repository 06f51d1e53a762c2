"""DeLong's test (Training/delong.py) against independent computations: scikit-learn's AUC, the structural
components from their definition (every malignant-benign pair), a large-sample bootstrap of the variance of
the AUC difference, a hand-worked example and the test's false-positive rate under the null."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from BreastCMSLLib.cohort.metrics import replicate_metrics
from Training.delong import auc_covariance, delong_test, structural_components


def correlated_scores(rng: np.random.Generator, n: int, shift_b: float = 0.0):
    """Labels and two correlated scorers (shared case effect), with ties from rounding."""
    label = (rng.random(n) < 0.45).astype(int)
    common = rng.normal(size=n) + 1.2 * label
    a = np.round(common + 0.6 * rng.normal(size=n), 1)
    b = np.round(common + 0.9 * rng.normal(size=n) + shift_b * label, 1)
    return label, a, b


def psi_components(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V10 and V01 from DeLong et al.'s definition: psi(x, y) = 1 if x > y, 1/2 if x = y, 0 otherwise."""
    x, y = score[label == 1], score[label == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_hand_worked_example():
    # malignant 0.9 beats both benign cases, 0.4 beats 0.1 only and ties with nothing; benign 0.5 is beaten by
    # one of two malignant cases, 0.1 by both: AUC 3/4, V10 (1, 1/2), V01 (1/2, 1)
    auc, v10, v01 = structural_components(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1]))
    assert auc[0] == pytest.approx(0.75)
    np.testing.assert_allclose(v10[0], [1.0, 0.5])
    np.testing.assert_allclose(v01[0], [0.5, 1.0])
    # S = var(V10) / m + var(V01) / n = 0.125 / 2 + 0.125 / 2
    _, cov = auc_covariance(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1]))
    assert cov[0, 0] == pytest.approx(0.125)


def test_auc_and_components_match_their_definitions():
    rng = np.random.default_rng(1)
    label, a, b = correlated_scores(rng, 157)
    auc, v10, v01 = structural_components(label, np.vstack([a, b]))
    for k, s in enumerate((a, b)):
        assert auc[k] == pytest.approx(roc_auc_score(label, s), abs=1e-12)
        ref10, ref01 = psi_components(label, s)
        np.testing.assert_allclose(v10[k], ref10, atol=1e-12)
        np.testing.assert_allclose(v01[k], ref01, atol=1e-12)
    # the covariance from the brute-force components, as DeLong et al. define S
    r10 = np.vstack([psi_components(label, s)[0] for s in (a, b)])
    r01 = np.vstack([psi_components(label, s)[1] for s in (a, b)])
    _, cov = auc_covariance(label, np.vstack([a, b]))
    np.testing.assert_allclose(cov, np.cov(r10) / r10.shape[1] + np.cov(r01) / r01.shape[1], atol=1e-14)


def test_variance_of_the_difference_matches_a_large_bootstrap():
    rng = np.random.default_rng(2)
    label, a, b = correlated_scores(rng, 400, shift_b=-0.3)
    result = delong_test(label, a, b)
    assert result.difference == pytest.approx(roc_auc_score(label, a) - roc_auc_score(label, b), abs=1e-12)
    # stratified bootstrap (the malignant and the benign cases resampled apart, as DeLong's variance conditions
    # on their numbers); each resample's AUC from the Mann-Whitney ranks (checked against scikit-learn in
    # test_training_metrics.py)
    pos, neg = np.flatnonzero(label == 1), np.flatnonzero(label == 0)
    boot = np.random.default_rng(3)
    idx = np.hstack([boot.choice(pos, (4000, pos.size)), boot.choice(neg, (4000, neg.size))])
    diffs = replicate_metrics(label, a, idx)["auc"] - replicate_metrics(label, b, idx)["auc"]
    assert diffs[0] == pytest.approx(roc_auc_score(label[idx[0]], a[idx[0]]) - roc_auc_score(label[idx[0]], b[idx[0]]))
    assert result.se == pytest.approx(np.std(diffs, ddof=1), rel=0.08)
    assert result.p == pytest.approx(2 * norm.sf(abs(result.difference) / result.se))
    assert result.ci_low < result.difference < result.ci_high


def test_false_positive_rate_under_the_null_is_near_five_percent():
    # two scorers of the same distribution on the same cases: p < 0.05 in about 5 % of 1000 studies
    rng = np.random.default_rng(4)
    rejections = 0
    for _ in range(1000):
        label = rng.integers(0, 2, 80)
        common = 1.0 * label + rng.normal(size=80)
        rejections += delong_test(label, common + rng.normal(size=80), common + rng.normal(size=80)).p < 0.05
    assert 0.03 <= rejections / 1000 <= 0.075


def test_identical_scores_and_one_class():
    label = np.array([0, 1, 0, 1, 1])
    s = np.array([0.1, 0.7, 0.3, 0.2, 0.9])
    r = delong_test(label, s, s)
    assert (r.difference, r.se, r.p) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="both classes"):
        delong_test(np.ones(5, int), s, s)
