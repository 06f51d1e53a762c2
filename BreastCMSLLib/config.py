"""Configuration dataclasses. ``ModelConfig`` (with its preprocessing) travels inside every model file.

Sizes are in voxels in (i, j, k) order of the canonical axial LPS grid; lengths in millimetres.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

MAP_NAMES = ("coam", "cam", "fine")  # the localization maps an analysis gives, each with a labelmap and a peak
NETWORK_STRIDE = 32  # conv1 (2) x max pool (2) x layer2..4 (2 each): input voxels per feature voxel
STAGE_STRIDES = {"layer2": 8, "layer3": 16, "layer4": NETWORK_STRIDE}  # input voxels per voxel of each stage
PEAK_RULES = ("node", "quadratic", "centroid")  # BreastCMSLLib.pipeline.peaks


@dataclass(frozen=True)
class FineMapConfig:
    """The fine map (:func:`BreastCMSLLib.network.attention.fine_map`): Eq. 5 on ``stage``'s output, multiplied by
    layer4's COAM carried onto that grid when ``gated``; its peak found by ``peak`` (one of :data:`PEAK_RULES`)."""

    stage: str = "layer2"
    gated: bool = False
    peak: str = "centroid"

    def __post_init__(self) -> None:
        if self.stage not in ("layer2", "layer3") or self.peak not in PEAK_RULES:
            raise ValueError(f"fine map: stage must be layer2 or layer3 and peak one of {PEAK_RULES}, got {self}")


FINE_MAP = FineMapConfig()  # the default: the localization study's validation split's best (docs/maps.md)


@dataclass(frozen=True)
class MaskConfig:
    """Parameters of :func:`BreastCMSLLib.pipeline.mask.breast_mask` (slice-wise Frangi breast mask). Lengths in mm."""

    work_spacing_mm: float = 2.0  # in-plane spacing the slices are binned to first (speed; the mask is smooth)
    body_fraction: float = 0.25  # body outline = T1 above this fraction of the volume's 99th percentile (fat)
    tissue_fraction: float = 0.1  # below this fraction: air or lung (thoracic cavity)
    sigma_mm: float = 4.0  # Gaussian scale of the Frangi Hessian (about half the pectoral muscle thickness)
    alpha: float = 0.5  # Frangi plate/line sensitivity (ITK ObjectnessMeasure alpha)
    beta: float = 0.5  # Frangi blob sensitivity (ITK ObjectnessMeasure beta)
    gamma: float = 0.1  # Frangi structureness, for T1 / 99th percentile and a sigma^2-normalized Hessian
    edge_threshold: float = 0.2  # vesselness above this (0..1) is an edge
    min_component_mm2: float = 25.0  # edge components of a slice smaller than this are removed
    min_cavity_mm2: float = 400.0  # dark non-body regions at least this large count as thoracic cavity
    offset_mm: float = -2.0  # shift of the posterior limit from the chest-wall edge (+ = posterior)
    limit_median_mm: float = 60.0  # median filter of the posterior limit across columns (drops merged strands)
    smooth_sigma_mm: float = 2.0  # 3D Gaussian smoothing of the stacked slice masks
    rebinarize: float = 0.5  # threshold of the smoothed mask


@dataclass(frozen=True)
class PreprocessConfig:
    """One-case preprocessing (see :mod:`BreastCMSLLib.pipeline.preprocess`)."""

    input_size: tuple[int, int, int] = (340, 220, 128)  # network input, voxels (i, j, k)
    spacing: tuple[float, float, float] | None = None  # resample to this spacing (mm); None keeps it
    # upper clip: this percentile of the masked subtraction voxels. 99.9, not 99.5: at 99.5 on average 11 %
    # (up to 32 %) of a phantom lesion's voxels saturated in all six phases, flattening their kinetic curves
    clip_percentile: float = 99.9
    mask: MaskConfig = field(default_factory=MaskConfig)
    phases: tuple[int, ...] | None = None  # post-contrast phase numbers taken (1 = the first); None: every one given
    phase_times_s: tuple[float, ...] | None = None  # the model's: median training times of those phases, s after
    # the injection (set by fit; analysis takes a longer study's phases nearest these, pipeline/model_phases.py)
    unit: str = "whole"  # "whole": the bilateral study; "breast": one breast, cut at the midline, a left one
    # mirrored onto a right one's orientation (pipeline/breasts.py; input_size then set for one breast)

    def __post_init__(self) -> None:
        if len(self.input_size) != 3 or min(self.input_size) < NETWORK_STRIDE:
            raise ValueError(f"input_size must be 3 sizes of at least {NETWORK_STRIDE} voxels (the network's "
                             f"stride), got {tuple(self.input_size)}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be 3 positive lengths in mm, got {self.spacing}")
        if not 0 < self.clip_percentile <= 100:
            raise ValueError(f"clip_percentile must be in (0, 100], got {self.clip_percentile}")
        if self.phases is not None and (not self.phases or min(self.phases) < 1 or list(self.phases) != sorted(
                set(self.phases))):
            raise ValueError(f"phases must be increasing post-contrast phase numbers from 1, got {self.phases}")
        if self.phase_times_s is not None and (self.phases is None or len(self.phase_times_s) != len(self.phases)):
            raise ValueError(f"phase_times_s needs one time per phase of phases, got {self.phase_times_s}")
        if self.unit not in ("whole", "breast"):
            raise ValueError(f"unit must be whole or breast, got {self.unit!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network and its loss. ``in_channels`` is the number of subtraction volumes."""

    in_channels: int = 6
    width_factor: float = 1.0  # multiplies the ResNet widths 64-128-256-512
    pooling: str = "avg"  # global pooling: "avg" or "max" of the features, or "instance_max" (the position
    # with the largest head logit: logit = max of the logit map, as multiple-instance learning reads a bag)
    loss: str = "cmsl"  # "cmsl", "nsl" (angular, p = sigmoid(s cos)) or "bce" (p = sigmoid(logit))
    s: float = 20.0
    m: float = 0.35
    aux_classes: int = 0  # >0 adds an auxiliary head (e.g. BI-RADS for the DK-MT baseline)
    arch: str = "resnet34_3d"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.width_factor <= 0 or int(64 * self.width_factor) < 1:
            raise ValueError(f"in_channels must be >= 1 and width_factor > 0 with at least one conv1 channel, "
                             f"got {self.in_channels} and {self.width_factor}")
        if self.pooling not in ("avg", "max", "instance_max") or self.loss not in ("cmsl", "nsl", "bce"):
            raise ValueError(f"pooling must be avg, max or instance_max and loss cmsl, nsl or bce, "
                             f"got {self.pooling}, {self.loss}")
        if self.aux_classes < 0:
            raise ValueError(f"aux_classes must be >= 0, got {self.aux_classes}")

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
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
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
