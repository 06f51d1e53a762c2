"""Localization against lesion truth: the pointing game and the top-1 % share in the lesion mask dilated by
5 mm, and two reference points that are not a method (the brightest enhancement, the breast centre).

All points are LPS mm. The dilation is SimpleITK's ``BinaryDilate`` with a ball whose radius along each axis
is 5 mm in that axis' voxels (rounded, at least one voxel), on the lesion mask's own grid (the phantom's
``truth/lesion_mask``). Maps are scored on the network's input grid, where they are made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.pipeline.peaks import plateau_peak_lps
from BreastCMSLLib.pipeline.preprocess import Preprocessed, to_ijk

DILATION_MM = 5.0
TOP_FRACTION = 0.01


@dataclass(frozen=True)
class MapScore:
    """One map's (or reference point's) result on one case: its peak (LPS mm), the distance to the lesion
    centre (mm), whether the peak lies in the dilated lesion mask (None: no mask) and the share of the
    map's top 1 % input-grid voxels inside it (None: no mask, or a point without a map)."""

    peak: tuple[float, float, float]
    distance_mm: float
    pointing: bool | None
    top_share: float | None


def lesion_mask(case_dir: str | Path) -> sitk.Image | None:
    """The case's ``truth/lesion_mask`` (any suffix), or None when the case has none."""
    found = sorted(Path(case_dir).glob("truth/lesion_mask.*"))
    return sitk.ReadImage(str(found[0]), sitk.sitkUInt8) if found else None


def dilated(mask: sitk.Image, radius_mm: float = DILATION_MM) -> sitk.Image:
    """``mask`` (uint8, non-zero = lesion) dilated by a ball of ``radius_mm`` (per axis in that axis' voxels),
    cut to the lesion's bounding box grown by the radius (the rest is empty)."""
    radius = [max(1, round(radius_mm / s)) for s in mask.GetSpacing()]
    binary = mask > 0
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(binary)
    if not stats.HasLabel(1):
        return binary
    box = stats.GetBoundingBox(1)  # (start i, j, k, size i, j, k)
    size = mask.GetSize()
    lo = [max(0, box[a] - radius[a] - 1) for a in range(3)]
    hi = [min(size[a], box[a] + box[a + 3] + radius[a] + 1) for a in range(3)]
    roi = sitk.RegionOfInterest(binary, [h - low for low, h in zip(lo, hi, strict=True)], lo)
    return sitk.BinaryDilate(roi, radius, sitk.sitkBall, 0, 1)


def inside(mask: sitk.Image, point) -> bool:
    """True when the voxel of ``mask`` nearest to the LPS point is inside the image and non-zero."""
    index = np.rint(mask.TransformPhysicalPointToContinuousIndex([float(v) for v in point])).astype(int)
    if np.any(index < 0) or np.any(index >= np.array(mask.GetSize())):
        return False
    return bool(mask[tuple(int(v) for v in index)])


def on_input_grid(mask: sitk.Image, prep: Preprocessed) -> np.ndarray:
    """``mask`` resampled (nearest voxel, empty outside it) onto the input grid: bool (I, J, K)."""
    return to_ijk(sitk.Resample(mask, prep.input_grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0


def top_share(values: np.ndarray, region: np.ndarray, valid: np.ndarray | None = None,
              fraction: float = TOP_FRACTION) -> float:
    """The share of the ``fraction`` highest-valued voxels of ``values`` (over ``valid``, default all) that
    lie in ``region`` (bool, same shape); ``ceil(fraction n)`` voxels, ties broken by storage order."""
    flat = values[valid] if valid is not None else values.ravel()
    inside_region = region[valid] if valid is not None else region.ravel()
    n = flat.size
    k = max(1, math.ceil(fraction * n))
    top = np.argpartition(flat, n - k)[n - k:]
    return float(inside_region[top].mean())


def brightest_enhancement(prep: Preprocessed) -> tuple[tuple[float, float, float], np.ndarray]:
    """Reference, not a method: the maximum over the subtraction channels inside the breast mask, (I, J, K),
    and its peak (LPS mm; a plateau resolves as for the maps, :mod:`BreastCMSLLib.pipeline.peaks`)."""
    breast = to_ijk(prep.input_grid) > 0
    values = np.where(breast, prep.array.max(axis=0), 0.0)
    return plateau_peak_lps(values, prep.input_grid, breast), values


def breast_centre(prep: Preprocessed) -> tuple[float, float, float]:
    """Reference, not a method: the centroid (LPS mm) of the breast mask on the input grid."""
    index = np.argwhere(to_ijk(prep.input_grid) > 0).mean(axis=0)
    return tuple(prep.input_grid.TransformContinuousIndexToPhysicalPoint(index.tolist()))


def score(peak, centre, mask: sitk.Image | None, region: np.ndarray | None = None,
          values: np.ndarray | None = None, valid: np.ndarray | None = None) -> MapScore:
    """A :class:`MapScore` for a peak (and, when ``values`` and the input-grid ``region`` are given, its map)
    against the lesion ``centre`` and the dilated ``mask``."""
    peak = tuple(float(v) for v in peak)
    distance = float(np.linalg.norm(np.subtract(peak, centre)))
    if mask is None:
        return MapScore(peak, distance, None, None)
    share = top_share(values, region, valid) if values is not None and region is not None else None
    return MapScore(peak, distance, inside(mask, peak), share)
