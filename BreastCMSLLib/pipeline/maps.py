"""The maps of one case after its forward pass: COAM, CAM and the fine map carried from their feature grids onto
the input and reference grids, their labelmaps and peaks, and the case's :class:`Analysis`.

numpy and SimpleITK only, no torch: the cohort's worker processes run this stage
(:mod:`BreastCMSLLib.cohort.stages`) and start without importing torch. Peaks are LPS millimetres; maps are
float32 in [0, 1] on the reference input's grid (the first subtraction or first post-contrast phase, as stored);
labelmaps are uint8 {0, 1} on the same grid.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.config import NETWORK_STRIDE, STAGE_STRIDES, FineMapConfig
from BreastCMSLLib.network.calibration import Calibration
from BreastCMSLLib.network.domain import DomainCheck, applicability
from BreastCMSLLib.pipeline.peaks import centroid_peak, plateau_peak_lps, quadratic_peak, stage_point_lps
from BreastCMSLLib.pipeline.preprocess import Preprocessed, to_reference


def upsample_linear(small: np.ndarray, size: tuple[int, int, int], stride: int = NETWORK_STRIDE) -> np.ndarray:
    """A (d, h, w) map on a feature grid of ``stride`` input voxels per voxel (layer4's: 32), linearly
    interpolated onto an input grid of ``size`` (I, J, K) voxels and constant beyond the outer feature centres.
    Returns float32 (I, J, K), stored with k slowest (as :func:`~BreastCMSLLib.pipeline.preprocess.to_ijk`).

    Every stage of the network (conv1 k7 s2 p3, max pooling k3 s2 p1, the k3 s2 p1 and k1 s2 shortcut
    convolutions) centres output o on input 2 o, so feature voxel f is centred on input voxel ``stride`` f: the
    feature grid has the input grid's direction and ``stride`` times its spacing, and trilinear interpolation in
    physical space is a linear pass per index axis. Each pass computes a + (b - a) w with exact weights
    (``stride`` is a power of two), so a plateau of equal features stays exactly equal; written by hand because
    SimpleITK's resampler maps every voxel through physical space, three times slower for the same values (to
    float32 rounding).
    """
    x = np.ascontiguousarray(np.asarray(small, np.float32).T)  # (w, h, d): k slowest, as the result
    for axis, n in ((2, size[0]), (1, size[1]), (0, size[2])):  # i, j, then whole k planes
        position = np.arange(n) / stride
        last = x.shape[axis] - 1
        lo = np.minimum(np.floor(position).astype(np.intp), last)
        weight = (position - lo).astype(np.float32).reshape([n if a == axis else 1 for a in range(3)])
        start = np.take(x, lo, axis)
        x = np.take(x, np.minimum(lo + 1, last), axis)
        x -= start
        x *= weight
        x += start
    return x.T


def normalized_on_input_grid(small: np.ndarray, prep: Preprocessed, stride: int = NETWORK_STRIDE) -> np.ndarray:
    """A feature-grid map (``stride`` input voxels per voxel) carried linearly onto the input grid
    (:func:`upsample_linear`), min-max normalized to [0, 1] over the voxels inside the reference volume, 0
    elsewhere. Returns float32 (I, J, K)."""
    up = upsample_linear(small, prep.input_grid.GetSize(), stride)
    inside = prep.inside
    values = up[inside]  # a box: a view (a mask: a copy)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(up)
    if isinstance(inside, np.ndarray):
        up -= lo
        up *= 1.0 / (hi - lo)
        up[~inside] = 0.0
        return up
    values -= lo
    values *= 1.0 / (hi - lo)
    for axis, part in enumerate(inside):  # the slabs outside the box
        up[(slice(None),) * axis + (slice(None, part.start),)] = 0.0
        up[(slice(None),) * axis + (slice(part.stop, None),)] = 0.0
    return up


def peak_lps(map_ijk: np.ndarray, prep: Preprocessed) -> tuple[float, float, float]:
    """LPS point (mm) of the map's maximum over the valid input-grid voxels; a plateau of maxima resolves
    to the voxel nearest its centroid (:mod:`BreastCMSLLib.pipeline.peaks`), whatever the storage order."""
    return plateau_peak_lps(map_ijk, prep.input_grid, prep.inside)


def stage_peak_lps(small: np.ndarray, stride: int, rule: str, prep: Preprocessed,
                   on_input: np.ndarray | None = None) -> tuple[float, float, float]:
    """LPS point (mm) of a feature-grid map's peak by ``rule``: "node" (the input-grid maximum of ``on_input``,
    :func:`peak_lps`), "quadratic" or "centroid" (sub-cell estimates on the feature grid,
    :mod:`BreastCMSLLib.pipeline.peaks`; ``stride`` input voxels per feature voxel)."""
    if rule == "node":
        return peak_lps(normalized_on_input_grid(small, prep, stride) if on_input is None
                        else on_input, prep)
    index = quadratic_peak(small) if rule == "quadratic" else centroid_peak(small)
    return stage_point_lps(index, stride, prep.input_grid)


def labelmap(image: sitk.Image, fraction: float) -> sitk.Image:
    """uint8 {0, 1}: 1 where the map (float32) is >= fraction x its maximum, that threshold rounded to float32 (as
    SimpleITK's ``GreaterEqual`` rounds it)."""
    values = sitk.GetArrayViewFromImage(image)
    label = sitk.GetImageFromArray((values >= np.float32(fraction * float(values.max()))).view(np.uint8))
    label.CopyInformation(image)
    return label


@dataclass
class NetResult:
    """What one case's maps and scores need from the forward pass, on the CPU: every map on its own feature
    grid (:func:`BreastCMSLLib.pipeline.analyze.grid_maps`), the fine map's configuration and the fine map on its
    stage's grid (both None: no fine map), the scores (``probability`` calibrated with the model's
    ``calibration``), the device and precision it ran with, and the pooled feature's training-domain check."""

    maps: dict[str, np.ndarray]
    fine: FineMapConfig | None
    fine_grid: np.ndarray | None
    probability: float
    probability_uncalibrated: float
    cos_theta: float
    logit: float
    calibration: Calibration
    device: str
    precision: str
    domain: DomainCheck


@dataclass
class Analysis:
    """Everything ``breastcmsl analyze`` reports for one case (maps on the reference grid). The ``fine*``
    fields are None when the fine map was not asked for."""

    probability: float  # calibrated: sigmoid(score / T) with the model file's temperature (T = 1 without one)
    cos_theta: float
    logit: float
    prediction: str  # "malignant" when probability >= threshold
    probability_uncalibrated: float  # sigmoid(score): the network's own output
    threshold: float  # the model's operating point on the calibrated probability
    calibration: Calibration
    coam: sitk.Image
    cam: sitk.Image
    coam_label: sitk.Image
    cam_label: sitk.Image
    coam_peak_lps: tuple[float, float, float]
    cam_peak_lps: tuple[float, float, float]
    device: str
    precision: str
    model: dict
    label_fraction: float
    prep: Preprocessed
    coam_input: np.ndarray  # (I, J, K) on the input grid, for figures
    cam_input: np.ndarray
    mask_source: str  # what the breast mask came from: "t1", or "pre" (no T1; CaseInputs.mask_source)
    timings: dict = field(default_factory=dict)
    fine: sitk.Image | None = None
    fine_label: sitk.Image | None = None
    fine_peak_lps: tuple[float, float, float] | None = None
    fine_input: np.ndarray | None = None
    fine_config: FineMapConfig | None = None
    grid_maps: dict = field(default_factory=dict)  # :func:`grid_maps`, for the localization study
    applicability: dict = field(default_factory=dict)  # :func:`BreastCMSLLib.network.domain.applicability`
    breasts: dict | None = None  # a per-breast model's study: each breast's record (pipeline/bilateral.py)


def finish(prep: Preprocessed, net: NetResult, model: dict, mask_source: str, label_fraction: float = 0.5,
           timings: dict | None = None) -> Analysis:
    """The last stage of a case: COAM, CAM and the fine map carried back to the reference grid, labelmaps and
    peaks. ``model`` is :meth:`~BreastCMSLLib.network.modelfile.LoadedModel.info`; ``timings`` (seconds per
    stage so far) gains ``maps_s``."""
    t2 = time.perf_counter()
    maps, fine = net.maps, net.fine
    small = {"coam": (maps["coam"], NETWORK_STRIDE), "cam": (maps["cam"], NETWORK_STRIDE)}
    if fine is not None:
        small["fine"] = (net.fine_grid, STAGE_STRIDES[fine.stage])

    def carried(name: str) -> tuple[np.ndarray, sitk.Image, sitk.Image, tuple[float, float, float]]:
        feature_map, stride = small[name]
        on_input = normalized_on_input_grid(feature_map, prep, stride)
        on_reference = to_reference(on_input, prep)
        rule = fine.peak if name == "fine" else "node"
        return (on_input, on_reference, labelmap(on_reference, label_fraction),
                stage_peak_lps(feature_map, stride, rule, prep, on_input))

    with ThreadPoolExecutor(len(small)) as pool:  # SimpleITK and numpy release the GIL: every map at once
        done = dict(zip(small, pool.map(carried, small), strict=True))
    per_map = {f"{name}{part}": value for name, carried_map in done.items()
               for part, value in zip(("_input", "", "_label", "_peak_lps"), carried_map, strict=True)}
    threshold = net.calibration.operating_point.threshold
    t3 = time.perf_counter()
    return Analysis(
        probability=net.probability,
        cos_theta=net.cos_theta,
        logit=net.logit,
        prediction="malignant" if net.probability >= threshold else "benign",
        probability_uncalibrated=net.probability_uncalibrated,
        threshold=threshold,
        calibration=net.calibration,
        device=net.device,
        precision=net.precision,
        model=model,
        label_fraction=label_fraction,
        prep=prep,
        mask_source=mask_source,
        timings={**(timings or {}), "maps_s": t3 - t2},
        fine_config=fine,
        grid_maps=maps,
        applicability=applicability(net.domain, prep.study),
        **per_map,
    )
