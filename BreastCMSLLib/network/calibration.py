"""Temperature scaling and the operating point: what a model file says about its probability.

The calibrated probability is sigmoid(z / T), z the pre-sigmoid score (s cos(theta) for CMSL/NSL, the
logit for BCE and the baselines) and T > 0 one scalar fitted on the validation split (Guo et al., ICML
2017). T keeps the sign of z, so p >= 0.5 is the same decision with or without calibration, and it keeps
the order of the cases (the ROC and its AUC do not change). A :class:`Calibration` travels as JSON in the
model file's metadata; a model file without one reads as T = 1, "uncalibrated".
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from BreastCMSLLib.config import ModelConfig, from_dict

if TYPE_CHECKING:  # torch only where a score is turned into a probability: reading a Calibration needs none
    import torch

    from BreastCMSLLib.network.net import NetOutput

DEFAULT_RULE = "probability=0.5"


@dataclass(frozen=True)
class ScoreMetrics:
    """Calibration of probabilities against labels: expected and maximum calibration error (15 equal-width
    bins of the malignancy probability), Brier score and negative log-likelihood (nats per case)."""

    ece: float
    mce: float
    brier: float
    nll: float


@dataclass(frozen=True)
class OperatingPoint:
    """The decision threshold on the calibrated probability and what it gave on the validation split.

    ``rule``: ``probability=0.5`` (the default), ``sensitivity=X`` (the highest threshold reaching
    sensitivity >= X) or ``specificity=X`` (the lowest reaching specificity >= X). CIs: 95 % percentile
    bootstrap over the validation cases at this fixed threshold."""

    rule: str = DEFAULT_RULE
    threshold: float = 0.5
    sensitivity: float = math.nan
    sensitivity_ci: tuple[float, float] = (math.nan, math.nan)
    specificity: float = math.nan
    specificity_ci: tuple[float, float] = (math.nan, math.nan)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        parse_rule(self.rule)


@dataclass(frozen=True)
class Calibration:
    """Temperature ``temperature`` (T > 0) fitted on ``n_val`` validation cases (``n_val_malignant``
    of them malignant), the validation metrics before and after, and the operating point.
    ``fitted`` is False for a model file without calibration (T = 1)."""

    temperature: float = 1.0
    fitted: bool = False
    n_val: int = 0
    n_val_malignant: int = 0
    before: ScoreMetrics | None = None
    after: ScoreMetrics | None = None
    operating_point: OperatingPoint = field(default_factory=OperatingPoint)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.fitted and (self.n_val < 1 or self.before is None or self.after is None):
            raise ValueError("a fitted calibration needs n_val >= 1 and the metrics before and after")

    def probability(self, score: torch.Tensor | float) -> torch.Tensor:
        """Calibrated probability sigmoid(score / T), float64."""
        import torch

        return torch.sigmoid(torch.as_tensor(score, dtype=torch.float64) / self.temperature)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        for key in ("before", "after"):  # Optional nested dataclasses: from_dict rebuilds plain hints only
            if isinstance(data, dict) and data.get(key) is not None:
                data[key] = from_dict(ScoreMetrics, data[key])
        return from_dict(cls, data)


def parse_rule(rule: str) -> tuple[str, float]:
    """``probability=0.5``, ``sensitivity=0.9`` or ``specificity=0.9`` -> (kind, value in (0, 1))."""
    kind, _, value = rule.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if kind not in ("probability", "sensitivity", "specificity") or not 0.0 < number < 1.0:
        raise ValueError(f"operating point must be sensitivity=X, specificity=X or probability=X with X in "
                         f"(0, 1), got {rule!r}")
    return kind, number


def score(out: NetOutput, cfg: ModelConfig) -> torch.Tensor:
    """The pre-sigmoid score z (float32): s cos(theta) for the angular losses, the logit for BCE."""
    return cfg.s * out.cos_theta.float() if cfg.angular else out.logit.float()


def operating_line(cal: Calibration) -> str:
    """The one plain line shown beside the probability (CLI, result.json, Slicer module, web page)."""
    op = cal.operating_point
    if not cal.fitted:
        return f"uncalibrated (no temperature in the model file): threshold {op.threshold:.3g}, no validation figures"
    return (f"at this model's threshold {op.threshold:.3g}: sensitivity {op.sensitivity:.2f}, "
            f"specificity {op.specificity:.2f} on {cal.n_val} validation cases")
