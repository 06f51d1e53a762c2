"""The training domain a model file carries, and whether one study lies inside it.

A :class:`DomainRecord` holds (a) the input envelope of the training split: voxel spacing and field of view in mm
along the canonical axial LPS axes, the acquisition planes, bilateral or single-breast coverage, the post-contrast
phases and their times, and quantiles of each channel's network input inside the breast mask; (b) a feature-space
density: class-conditional Gaussians with one shared covariance over the pooled feature the head reads (Lee et al.,
NeurIPS 2018, "Mahalanobis"); and (c) an input-pattern density: one Gaussian over a short description of the
network input (:data:`PATTERN_PARTS`: each channel's enhancement quantiles, every channel pair's correlation
inside the breast mask, where the mask lies), which sees what the pooled feature of a small model does not:
phases shuffled, repeated or moved. A study's score is the larger of its two Mahalanobis distances, each divided by
its own threshold; each threshold covers :data:`PART_COVERAGE` of held-out cases, so that (Bonferroni) at least
:data:`COVERAGE` lie inside both. The Gaussians are fitted by ``breastcmsl-train`` (:mod:`Training.domain`, with
scikit-learn's Ledoit-Wolf covariance); here they are only applied, with numpy, so the cohort's torch-free workers
can read them.

A precision matrix travels as its Cholesky factor L (P = L Lᵀ), lower triangle packed, float32, base64 in the
model file's JSON metadata: D (D + 1) / 2 numbers, 0.70 MB of text for the feature density at the paper's width
(D = 512).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from BreastCMSLLib.config import from_dict

RECORD_VERSION = 2
QUANTILES = (0.5, 0.9, 0.99)  # of each channel's network input (in [0, 1]) inside the breast mask
COVERAGE = 0.95  # of held-out cases inside both thresholds
PART_COVERAGE = 1 - (1 - COVERAGE) / 2  # of held-out cases inside each of the two thresholds
CORRELATION_FLOOR = 1e-3  # 1 - r below this reads as this: a phase given twice has r = 1
AXES = ("left-right", "front-back", "head-foot")  # canonical axial LPS axes i, j, k
# how far outside the training range a study may lie before it is called outside (each side)
SPACING_FACTOR = 1.25  # x / ÷ the training extremes
FOV_FACTOR = 1.15
TIME_SLACK_S = 30.0  # seconds
ENHANCEMENT_SLACK = 0.25  # of the training range, plus ENHANCEMENT_FLOOR
ENHANCEMENT_FLOOR = 0.02


@dataclass(frozen=True)
class StudyGeometry:
    """What the envelope compares for one study: spacing and field of view (mm, canonical axial LPS axes i, j, k)
    of the reference volume, its acquisition ``plane`` (axial, sagittal, coronal: the axis its slices are stacked
    along), ``coverage`` (bilateral or single, from the breast mask), the post-contrast phases used (numbers,
    1 = the first, of the study's ``phases_of``; ``phase_rule`` says how they were chosen) with their times in
    seconds after the injection (:mod:`BreastCMSLLib.pipeline.phase_times`; None where the study does not say),
    the :data:`QUANTILES` of each channel's network input inside the breast mask, and the input ``pattern``
    (:func:`input_pattern`; empty in a cache written before it was measured)."""

    spacing_mm: tuple[float, float, float]
    fov_mm: tuple[float, float, float]
    plane: str
    coverage: str
    phases: tuple[int, ...]
    phases_of: int
    phase_rule: str
    phase_times_s: tuple[float, ...] | None
    enhancement: tuple[tuple[float, ...], ...]
    pattern: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StudyGeometry:
        data = dict(data)
        data["enhancement"] = [tuple(q) for q in data["enhancement"]]
        return from_dict(cls, data)


def input_pattern(enhancement: tuple[tuple[float, ...], ...], values: np.ndarray,
                  inside: np.ndarray) -> tuple[float, ...]:
    """The input pattern of one network input, in the order of :func:`pattern_labels`: each channel's
    ``enhancement`` quantiles; log(1 - r) of the correlation r of every channel pair over ``values`` (C, N), the
    channels at the breast mask's voxels (floored at :data:`CORRELATION_FLOOR`; r = 0 where a channel is constant);
    the mask ``inside`` (I, J, K)'s share of the grid, its centre's offset along i (left-right) as a fraction of
    the grid, and its share in the first half along i."""
    c = values.shape[0]
    if values.shape[1] > 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.nan_to_num(np.corrcoef(values), nan=0.0)
    else:
        r = np.zeros((c, c))
    pairs = r[np.triu_indices(c, 1)]
    columns = np.nonzero(inside)[0]
    size_i = inside.shape[0]
    place = (float(inside.mean()), float(columns.mean() / size_i - 0.5) if columns.size else 0.0,
             float(np.mean(columns < size_i / 2)) if columns.size else 0.0)
    return (*(float(q) for quantiles in enhancement for q in quantiles),
            *(float(v) for v in np.log(np.maximum(1.0 - pairs, CORRELATION_FLOOR))), *place)


def pattern_labels(channels: int) -> list[str]:
    """What each value of :func:`input_pattern` is, in plain words, for ``channels`` channels."""
    pairs = np.triu_indices(channels, 1)
    return [*(f"enhancement of channel {c + 1} ({round(100 * q)}th percentile in the breast)"
              for c in range(channels) for q in QUANTILES),
            *(f"the correlation of channels {a + 1} and {b + 1}" for a, b in zip(*pairs, strict=True)),
            "the breast mask's share of the input", "the breast mask's left-right position",
            "the breast mask's left-right balance"]


@dataclass(frozen=True)
class Envelope:
    """The training split's inputs: per axis (lo, hi) of spacing and field of view (mm), the planes and coverages
    seen, per channel the (lo, hi) of its phase time (s; None when unknown) and of each enhancement quantile."""

    n_cases: int
    spacing_mm: tuple[tuple[float, float], ...]
    fov_mm: tuple[tuple[float, float], ...]
    planes: tuple[str, ...]
    coverages: tuple[str, ...]
    phase_times_s: tuple[tuple[float, float], ...] | None
    enhancement: tuple[tuple[tuple[float, float], ...], ...]

    @classmethod
    def of(cls, studies: list[StudyGeometry]) -> Envelope:
        """The envelope of the training studies."""
        def span(values) -> tuple[tuple[float, float], ...]:
            a = np.asarray(values, dtype=float)
            return tuple((float(lo), float(hi)) for lo, hi in zip(a.min(0), a.max(0), strict=True))

        timed = [s.phase_times_s for s in studies if s.phase_times_s is not None]
        enh = np.asarray([s.enhancement for s in studies], dtype=float)  # (N, C, Q)
        return cls(len(studies), span([s.spacing_mm for s in studies]), span([s.fov_mm for s in studies]),
                   tuple(sorted({s.plane for s in studies})), tuple(sorted({s.coverage for s in studies})),
                   span(timed) if timed else None,
                   tuple(span(enh[:, c]) for c in range(enh.shape[1])))

    def reasons(self, study: StudyGeometry) -> list[str]:
        """Plain sentences, one per way ``study`` lies outside this envelope (none: inside)."""
        out = []
        if study.plane not in self.planes:
            out.append(f"{study.plane} acquisition; this model was trained on {' and '.join(self.planes)}")
        if study.coverage not in self.coverages:
            out.append(f"{_coverage_words(study.coverage)}; this model was trained on "
                       f"{' and '.join(_coverage_words(c) for c in self.coverages)}")
        for name, values, ranges, factor in (("voxel spacing", study.spacing_mm, self.spacing_mm, SPACING_FACTOR),
                                             ("field of view", study.fov_mm, self.fov_mm, FOV_FACTOR)):
            for axis, v, (lo, hi) in zip(AXES, values, ranges, strict=True):
                if not lo / factor <= v <= hi * factor:
                    out.append(f"{name} {_mm(v)} mm {axis}, training {_span(lo, hi)} mm")
        if self.phase_times_s is not None and study.phase_times_s is not None:
            for n, t, (lo, hi) in zip(study.phases, study.phase_times_s, self.phase_times_s, strict=False):
                if not lo - TIME_SLACK_S <= t <= hi + TIME_SLACK_S:
                    out.append(f"post-contrast phase {n} at {t:.0f} s, training {_span(lo, hi, '.0f')} s")
        for c, (quantiles, ranges) in enumerate(zip(study.enhancement, self.enhancement, strict=False)):
            for q, v, (lo, hi) in zip(QUANTILES, quantiles, ranges, strict=True):
                slack = ENHANCEMENT_SLACK * (hi - lo) + ENHANCEMENT_FLOOR
                if not lo - slack <= v <= hi + slack:
                    out.append(f"enhancement of channel {c + 1} ({round(100 * q)}th percentile in the breast) "
                               f"{v:.2f}, training {lo:.2f}-{hi:.2f}")
                    break
        return out


def _coverage_words(coverage: str) -> str:
    return "both breasts" if coverage == "bilateral" else "one breast"


def _mm(v: float) -> str:
    return f"{v:.3g}" if v < 10 else f"{v:.0f}"


def _span(lo: float, hi: float, fmt: str | None = None) -> str:
    text = (lambda v: format(v, fmt)) if fmt else _mm
    return text(lo) if text(lo) == text(hi) else f"{text(lo)}-{text(hi)}"


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str, count: int) -> np.ndarray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != 4 * count:
        raise ValueError(f"expected {count} float32 values, got {len(raw)} bytes")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


@dataclass(frozen=True, eq=False)
class FeatureDensity:
    """Class-conditional Gaussians with a shared covariance over D features: ``means`` (K, D) float32, the
    Cholesky factor ``cholesky`` (D, D, lower) of the precision matrix, the ``threshold`` of :meth:`score` set on
    held-out cases, how it was fitted (``n_train`` cases; ``n_held_out`` cases set the threshold; the covariance's
    shrinkage) and, where the features were standardized before the fit, each feature's training standard
    deviation ``spread`` (D,) (it names the most unusual feature of a case)."""

    means: np.ndarray
    cholesky: np.ndarray
    threshold: float
    n_train: int
    n_held_out: int
    shrinkage: float
    spread: np.ndarray | None = None
    method: str = "mahalanobis"

    def __post_init__(self) -> None:
        k, d = self.means.shape
        if self.cholesky.shape != (d, d) or not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"feature density: {k} means of {d} features need a {d} x {d} factor and a threshold "
                             f"> 0, got {self.cholesky.shape} and {self.threshold}")

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (not squared) of each of (N, D) ``features`` to each class mean: (N, K)."""
        x = np.asarray(features, dtype=np.float64).reshape(-1, self.means.shape[1])
        white = (x[:, None, :] - self.means.astype(np.float64)[None]) @ self.cholesky.astype(np.float64)
        return np.sqrt(np.einsum("nkd,nkd->nk", white, white))

    def score(self, features: np.ndarray) -> np.ndarray:
        """The smallest class distance of each feature vector: (N,)."""
        return self.distances(features).min(axis=1)

    def most_unusual(self, feature: np.ndarray) -> tuple[int, float]:
        """The index of the feature of ``feature`` (D,) farthest from its nearest class mean in training standard
        deviations, and that many (signed); needs ``spread``."""
        x = np.asarray(feature, dtype=np.float64)
        mean = self.means[int(np.argmin(self.distances(x)[0]))].astype(np.float64)
        z = (x - mean) / self.spread.astype(np.float64)
        k = int(np.argmax(np.abs(z)))
        return k, float(z[k])

    def to_dict(self) -> dict:
        d = self.means.shape[1]
        rows, cols = np.tril_indices(d)
        return {"method": self.method, "features": d, "classes": self.means.shape[0],
                "means": _encode(self.means), "cholesky_lower": _encode(self.cholesky[rows, cols]),
                "threshold": self.threshold, "n_train": self.n_train, "n_held_out": self.n_held_out,
                "shrinkage": self.shrinkage, "spread": None if self.spread is None else _encode(self.spread)}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureDensity:
        d, k = int(data["features"]), int(data["classes"])
        if d < 1 or k < 1 or data["method"] != "mahalanobis":
            raise ValueError(f"unknown feature density ({data['method']!r}, {k} classes of {d} features)")
        chol = np.zeros((d, d), np.float32)
        chol[np.tril_indices(d)] = _decode(data["cholesky_lower"], d * (d + 1) // 2)
        spread = None if data["spread"] is None else _decode(data["spread"], d)
        return cls(_decode(data["means"], k * d).reshape(k, d), chol, float(data["threshold"]), int(data["n_train"]),
                   int(data["n_held_out"]), float(data["shrinkage"]), spread)


@dataclass(frozen=True)
class DomainCheck:
    """What the network side hands the maps side for one case: the envelope, the feature distance and its
    threshold, the input-pattern density (the maps side measures the study's pattern against it), or
    (``problem``) why there is nothing to check against. Small: it crosses to the cohort's workers."""

    envelope: Envelope | None
    score: float | None
    threshold: float | None
    problem: str | None = None
    pattern: FeatureDensity | None = None


@dataclass(frozen=True, eq=False)
class DomainRecord:
    """The training domain of a model: envelope, feature density, input-pattern density, and the post-contrast
    phases the model takes (numbers, 1 = first) with their median training times (seconds; None when the cohort
    did not say)."""

    envelope: Envelope
    density: FeatureDensity
    pattern: FeatureDensity
    phases: tuple[int, ...]
    phase_times_s: tuple[float, ...] | None
    version: int = RECORD_VERSION
    extra: dict = field(default_factory=dict)  # provenance of the fit (cache, splits)

    def check(self, feature: np.ndarray) -> DomainCheck:
        """The :class:`DomainCheck` of one pooled feature vector (D,)."""
        return DomainCheck(self.envelope, float(self.density.score(feature)[0]), self.density.threshold,
                           pattern=self.pattern)

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "envelope": dataclasses.asdict(self.envelope),
                           "density": self.density.to_dict(), "pattern": self.pattern.to_dict(),
                           "phases": list(self.phases),
                           "phase_times_s": None if self.phase_times_s is None else list(self.phase_times_s),
                           "extra": self.extra}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DomainRecord:
        """Parse a record; a damaged or unknown one raises ValueError (or KeyError/TypeError) naming the part."""
        data = json.loads(text)
        if data.get("version") != RECORD_VERSION:
            raise RecordVersionError(f"version {data.get('version')!r}; this release reads version {RECORD_VERSION}: "
                                     "measure it again with `breastcmsl-train domain --run RUN`")
        env = dict(data["envelope"])
        env["enhancement"] = [tuple(tuple(r) for r in c) for c in env["enhancement"]]
        for key in ("spacing_mm", "fov_mm") + (("phase_times_s",) if env.get("phase_times_s") else ()):
            env[key] = [tuple(r) for r in env[key]]
        times = data["phase_times_s"]
        return cls(from_dict(Envelope, env), FeatureDensity.from_dict(data["density"]),
                   FeatureDensity.from_dict(data["pattern"]), tuple(data["phases"]),
                   None if times is None else tuple(float(t) for t in times), extra=dict(data.get("extra") or {}))


class RecordVersionError(ValueError):
    """A training-domain record of a version this release does not read."""


def read_record(text: str | None) -> tuple[DomainRecord | None, str | None]:
    """(record, None), or (None, why there is none) for a model file's metadata entry ``text``."""
    if text is None:
        return None, "this model file carries no record of its training data, so applicability is unknown"
    try:
        return DomainRecord.from_json(text), None
    except RecordVersionError as err:
        return None, f"the model file's training-domain record is of another {err}; applicability is unknown"
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return None, f"the model file's training-domain record is damaged ({type(err).__name__}: {err}), so " \
                     "applicability is unknown"


def applicability(check: DomainCheck, study: StudyGeometry | None) -> dict:
    """result.json's ``applicability``: ``in_domain`` (True, False, or None without a record), the ``score`` (the
    larger of the feature and input-pattern distances, each as a multiple of its threshold) against its
    ``threshold`` (1), both distances with their thresholds, and ``reasons`` in plain words (every envelope
    violation, then both distances as multiples of their thresholds)."""
    if check.envelope is None or check.score is None or not math.isfinite(check.score):
        return {"in_domain": None, "score": None, "threshold": None,
                "reasons": [check.problem or "no pooled feature to compare"]}
    if study is None or check.pattern is None or len(study.pattern) != check.pattern.means.shape[1]:
        return {"in_domain": None, "score": None, "threshold": None,
                "reasons": ["the study's input pattern was not measured, or not as the model's record was"]}
    reasons = check.envelope.reasons(study)
    feature = check.score / check.threshold
    distance = float(check.pattern.score(np.asarray(study.pattern))[0])
    pattern = distance / check.pattern.threshold
    reasons.append(f"feature distance {feature:.2f} × its validation threshold" +
                   ("" if feature <= 1.0 else " (unlike the training cases)"))
    if pattern <= 1.0:
        reasons.append(f"input pattern distance {pattern:.2f} × its threshold")
    else:
        k, z = check.pattern.most_unusual(np.asarray(study.pattern))
        reasons.append(f"input pattern distance {pattern:.2f} × its threshold (most unusual: "
                       f"{pattern_labels(len(check.envelope.enhancement))[k]}, {z:+.1f} training SDs)")
    score = max(feature, pattern)
    return {"in_domain": score <= 1.0 and len(reasons) == 2, "score": score, "threshold": 1.0,
            "feature_distance": check.score, "feature_threshold": check.threshold,
            "pattern_distance": distance, "pattern_threshold": check.pattern.threshold, "reasons": reasons}


def applicability_line(app: dict) -> str:
    """One line for a face or the CLI."""
    if app["in_domain"] is None:
        return "training domain unknown: " + "; ".join(app["reasons"])
    if app["in_domain"]:
        return "inside the training domain (" + "; ".join(app["reasons"]) + ")"
    return "outside what the model was trained on: " + "; ".join(app["reasons"])
