"""Configuration dataclasses. ``ModelConfig`` (with its preprocessing) travels inside every model file.

Sizes are in voxels in (i, j, k) order of the canonical axial LPS grid; lengths in millimetres.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MaskConfig:
    """Parameters of :func:`BreastCMSLLib.mask.breast_mask` (slice-wise Frangi breast mask)."""

    shrink: int = 2  # in-plane downsampling before the Hessian (speed); the mask is smooth anyway
    sigma_mm: float = 2.0  # Hessian scale of the Frangi filter, mm
    alpha: float = 0.5  # Frangi plate/line sensitivity (ITK ObjectnessMeasure alpha)
    beta: float = 0.5  # Frangi blob sensitivity (ITK ObjectnessMeasure beta)
    gamma: float = 5.0  # Frangi structureness (ITK ObjectnessMeasure gamma)
    edge_threshold: float = 0.05  # vesselness above this fraction of the slice maximum is an edge
    min_component_mm2: float = 200.0  # smaller connected components of a slice are removed, mm^2
    smooth_sigma_mm: float = 3.0  # 3D Gaussian smoothing of the stacked mask, mm
    rebinarize: float = 0.5  # threshold of the smoothed mask


@dataclass(frozen=True)
class PreprocessConfig:
    """One-case preprocessing (see :mod:`BreastCMSLLib.preprocess`)."""

    input_size: tuple[int, int, int] = (340, 220, 128)  # network input, voxels (i, j, k)
    spacing: tuple[float, float, float] | None = None  # resample to this spacing (mm); None keeps it
    clip_percentile: float = 99.5  # upper clip: this percentile of masked subtraction voxels
    mask: MaskConfig = field(default_factory=MaskConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The network and its loss. ``in_channels`` is the number of subtraction volumes."""

    in_channels: int = 6
    width_factor: float = 1.0  # multiplies the ResNet widths 64-128-256-512
    pooling: str = "avg"  # global pooling after the 1x1x1 head: "avg" or "max"
    loss: str = "cmsl"  # "cmsl", "nsl" (angular, p = sigmoid(s cos)) or "bce" (p = sigmoid(logit))
    s: float = 20.0
    m: float = 0.35
    aux_classes: int = 0  # >0 adds an auxiliary head (e.g. BI-RADS for the DK-MT baseline)
    arch: str = "resnet34_3d"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    @property
    def angular(self) -> bool:
        """True when the probability is sigmoid(s * cos(theta)) rather than sigmoid(logit)."""
        return self.loss in ("cmsl", "nsl")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return from_dict(cls, json.loads(text))


def from_dict(cls: type, data: dict[str, Any]):
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
