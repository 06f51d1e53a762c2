"""A bilateral study analyzed by a per-breast model (``PreprocessConfig.unit`` "breast"): the two breasts'
analyses made one for the whole study.

Each breast is one unit of the model (:mod:`.breasts`): its own probability, maps and peaks. The study's
record keeps every breast's (``Analysis.breasts``: probability, prediction, cos θ, peaks in LPS mm,
applicability); its study-level fields are those of the breast with the higher probability (the one a reader
looks at first), and each map of the study is, on the reference grid, the left breast's map left of the
midline and the right breast's map right of it (the midline: halfway between the two breasts' masks; each
breast's map is normalized on its own, so both breasts' maps span [0, 1]).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.pipeline.maps import Analysis
from BreastCMSLLib.pipeline.preprocess import Preprocessed, to_ijk

MAP_FIELDS = ("coam", "cam", "fine", "coam_label", "cam_label", "fine_label")


def mask_x(prep: Preprocessed) -> np.ndarray:
    """LPS x (mm) of the voxels of a unit's breast mask on its input grid."""
    grid = prep.input_grid
    ijk = np.argwhere(to_ijk(grid) > 0).astype(float)
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    return grid.GetOrigin()[0] + (ijk * np.array(grid.GetSpacing())) @ direction[0]


def voxel_x(image: sitk.Image) -> np.ndarray:
    """LPS x (mm) of every voxel of ``image``, in SimpleITK's (k, j, i) array order."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    step = direction[0] * np.array(image.GetSpacing())
    i, j, k = (np.arange(n, dtype=np.float64) for n in image.GetSize())
    return (image.GetOrigin()[0] + step[0] * i[None, None, :] + step[1] * j[None, :, None]
            + step[2] * k[:, None, None])


def breast_record(a: Analysis) -> dict:
    """What result.json keeps of one breast."""
    peaks = {f"{m}_peak_lps": None if getattr(a, f"{m}_peak_lps") is None else list(getattr(a, f"{m}_peak_lps"))
             for m in ("coam", "cam", "fine")}
    return {"probability": a.probability, "prediction": a.prediction, "cos_theta": a.cos_theta,
            "probability_uncalibrated": a.probability_uncalibrated, **peaks, "applicability": a.applicability}


def combine(left: Analysis, right: Analysis) -> Analysis:
    """The study's analysis from its two breasts' (see the module)."""
    midline = (float(mask_x(left.prep).min()) + float(mask_x(right.prep).max())) / 2.0
    on_left = voxel_x(left.coam) > midline
    maps = {}
    for name in MAP_FIELDS:
        a, b = getattr(left, name), getattr(right, name)
        if a is None or b is None:
            continue
        merged = sitk.GetImageFromArray(np.where(on_left, sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)))
        merged.CopyInformation(a)
        maps[name] = merged
    first = left if left.probability >= right.probability else right
    return dataclasses.replace(first, **maps, breasts={"left": breast_record(left), "right": breast_record(right)})
