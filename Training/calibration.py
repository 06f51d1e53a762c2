"""Temperature scaling on the validation split and the operating point chosen there.

One scalar T > 0 divides the pre-sigmoid score z (s cos(theta) for CMSL/NSL, the logit for BCE and the
baselines) and is chosen to minimize the validation negative log-likelihood (Guo et al., ICML 2017) with
scipy's bounded scalar minimizer on log T. A run keeps its calibration and the validation scores it was
fitted on in ``RUN/calibration.json`` (:mod:`.runfiles`); ``export`` copies the calibration into the model
file and, for ``--operating-point``, picks the threshold from those scores.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_curve

from BreastCMSLLib.cohort.metrics import bootstrap_metrics
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.calibration import Calibration, OperatingPoint, ScoreMetrics, parse_rule

from .metrics import calibrated_probability, calibration_metrics

MIN_CASES = 10
LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))  # T in [0.01, 100]


class UnusableSplitError(InputError):
    """The validation split cannot calibrate (fewer than :data:`MIN_CASES` cases or one class only)."""


def check_split(label: np.ndarray, split: str, source: str | Path) -> None:
    """Refuse a split with fewer than :data:`MIN_CASES` cases or without both classes, naming the counts."""
    n, n_pos = len(label), int(np.sum(label))
    if n < MIN_CASES or n_pos in (0, n):
        raise UnusableSplitError(source, f"the {split} split has {n} cases ({n_pos} malignant, {n - n_pos} benign); "
                                 f"calibration needs at least {MIN_CASES} cases with both classes")


def fit_temperature(score: np.ndarray, label: np.ndarray) -> float:
    """T minimizing the mean negative log-likelihood of sigmoid(score / T) (bounded to [0.01, 100])."""
    z, y = np.asarray(score, dtype=float), np.asarray(label, dtype=float)

    def nll(log_t: float) -> float:
        u = z / math.exp(log_t)
        return float(np.mean(y * np.logaddexp(0, -u) + (1 - y) * np.logaddexp(0, u)))

    return float(math.exp(minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded",
                                          options={"xatol": 1e-6}).x))


def operating_point(score: np.ndarray, label: np.ndarray, temperature: float, rule: str, source: str | Path,
                    n_boot: int = 2000, seed: int = 0) -> OperatingPoint:
    """The threshold of ``rule`` on the calibrated validation probabilities, with the sensitivity and
    specificity it gives there (95 % percentile-bootstrap CIs at that fixed threshold).

    ``sensitivity=X``: the highest threshold whose sensitivity is >= X (the best specificity that keeps it);
    ``specificity=X``: the lowest threshold whose specificity is >= X; ``probability=X``: X itself. The
    candidate thresholds are the validation cases' own scores (scikit-learn's ``roc_curve``)."""
    try:
        kind, value = parse_rule(rule)
    except ValueError as err:
        raise InputError("--operating-point", str(err)) from None
    z, y = np.asarray(score, dtype=float), np.asarray(label).astype(int)
    if kind == "probability":
        threshold = value
    else:
        fpr, tpr, cut = roc_curve(y, z, drop_intermediate=False)  # cut decreasing, cut[0] = inf
        ok = tpr >= value if kind == "sensitivity" else (1 - fpr >= value) & np.isfinite(cut)
        if not ok.any():
            raise InputError("--operating-point", f"no threshold reaches {rule} on the validation split")
        i = int(np.argmax(ok)) if kind == "sensitivity" else int(np.flatnonzero(ok)[-1])
        threshold = float(calibrated_probability(cut[i], temperature))
    if not 0.0 < threshold < 1.0:
        raise InputError("--operating-point", f"{rule} needs threshold {threshold!r} on the calibrated probability, "
                         "which rounds to 0 or 1 (no usable operating point)")
    m = bootstrap_metrics(y, calibrated_probability(z, temperature), n_boot=n_boot, seed=seed, threshold=threshold)
    return OperatingPoint(rule, threshold, m["sensitivity"]["value"],
                          (m["sensitivity"]["ci_low"], m["sensitivity"]["ci_high"]),
                          m["specificity"]["value"], (m["specificity"]["ci_low"], m["specificity"]["ci_high"]))


def calibrate_scores(score: np.ndarray, label: np.ndarray, source: str | Path, split: str = "val",
                     rule: str = "probability=0.5", n_boot: int = 2000) -> Calibration:
    """Check the split, fit T and measure the validation metrics before and after and the operating point."""
    label = np.asarray(label).astype(int)
    check_split(label, split, source)
    t = fit_temperature(score, label)
    return Calibration(temperature=t, fitted=True, n_val=len(label), n_val_malignant=int(label.sum()),
                       before=ScoreMetrics(**calibration_metrics(label, score, 1.0)),
                       after=ScoreMetrics(**calibration_metrics(label, score, t)),
                       operating_point=operating_point(score, label, t, rule, source, n_boot))


def with_rule(cal: Calibration, val: dict, rule: str, source: str | Path, n_boot: int = 2000) -> Calibration:
    """``cal`` with the operating point of ``rule`` chosen on its validation scores."""
    op = operating_point(val["score"], val["label"], cal.temperature, rule, source, n_boot)
    return dataclasses.replace(cal, operating_point=op)
