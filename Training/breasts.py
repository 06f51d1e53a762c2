"""The two breasts of a bilateral axial study: the midline between them and which breast a point or a mask lies in.

Frame: LPS millimetres; +x is the patient's left, so the left breast is the one at larger x than the midline.

The midline is found from the breast mask (:func:`BreastCMSLLib.pipeline.mask.breast_mask`, made from the
pre-contrast phase as ``preprocess`` makes it without a T1) on the volume's canonical axial grid: the number of
mask voxels in each sagittal plane dips between the breasts (:func:`BreastCMSLLib.pipeline.breasts.profile_midline`,
the rule per-breast preprocessing cuts by). Where the mask is empty or shows no such dip (a single breast in
view), the midline is the image centre, and the source says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.config import MaskConfig
from BreastCMSLLib.pipeline.breasts import profile_midline
from BreastCMSLLib.pipeline.grids import resample
from BreastCMSLLib.pipeline.mask import breast_mask
from BreastCMSLLib.pipeline.preprocess import canonical_grid, to_ijk

SIDES = ("left", "right")
LESION_SHARE = 0.1  # a breast holds the lesion when at least this share of the mask's voxels lie in it


@dataclass(frozen=True)
class Midline:
    """The sagittal plane between the breasts: ``x_mm`` (LPS x) and ``source`` (``"mask"`` or ``"centre"``)."""

    x_mm: float
    source: str


def image_centre_x(image: sitk.Image) -> float:
    """LPS x (mm) of the centre of the volume's voxel extent."""
    centre = [(n - 1) / 2.0 for n in image.GetSize()]
    return float(image.TransformContinuousIndexToPhysicalPoint(centre)[0])


def find_midline(pre: sitk.Image, mask_cfg: MaskConfig | None = None) -> Midline:
    """The midline of a bilateral study from its fat-suppressed pre-contrast phase ``pre`` (see the module)."""
    canon = canonical_grid(pre, None)
    mask = to_ijk(breast_mask(resample(pre, canon), mask_cfg or MaskConfig(), fat_suppressed=True))
    column = profile_midline(mask.sum(axis=(1, 2)))
    if column is None:
        return Midline(image_centre_x(pre), "centre")
    j, k = (mask.shape[1] - 1) / 2.0, (mask.shape[2] - 1) / 2.0
    return Midline(float(canon.TransformContinuousIndexToPhysicalPoint((column, j, k))[0]), "mask")


def side_of(x_mm: float, midline: Midline) -> str:
    """``"left"`` for a point at larger LPS x than the midline, else ``"right"``."""
    return "left" if x_mm > midline.x_mm else "right"


def mask_points(mask: sitk.Image) -> np.ndarray:
    """LPS points (mm), (N, 3), of the non-zero voxels of ``mask``."""
    ijk = np.argwhere(to_ijk(mask) > 0).astype(float)
    if not ijk.size:
        return np.zeros((0, 3))
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    return np.asarray(mask.GetOrigin()) + (ijk * np.asarray(mask.GetSpacing())) @ direction.T


def mask_shares(mask: sitk.Image, midline: Midline) -> dict[str, float]:
    """The share of the mask's voxels in each breast (both 0 for an empty mask)."""
    x = mask_points(mask)[:, 0]
    if not x.size:
        return {"left": 0.0, "right": 0.0}
    left = float((x > midline.x_mm).mean())
    return {"left": left, "right": 1.0 - left}


def mask_centroid(mask: sitk.Image, side: str | None = None, midline: Midline | None = None) -> tuple | None:
    """LPS centroid (mm) of the mask's voxels (in one breast when ``side`` and ``midline`` are given), or None."""
    points = mask_points(mask)
    if side is not None:
        points = points[(points[:, 0] > midline.x_mm) == (side == "left")]
    return tuple(float(v) for v in points.mean(axis=0)) if len(points) else None
