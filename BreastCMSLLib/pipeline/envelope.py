"""What one study looks like to the training-domain check (:class:`~BreastCMSLLib.network.domain.StudyGeometry`):
the reference volume's spacing, field of view and acquisition plane, the breast mask's coverage, the phases used and
the enhancement quantiles and the input pattern (:func:`~BreastCMSLLib.network.domain.input_pattern`) of the network
input inside the mask. Computed where a case is preprocessed (analysis and
the training cache alike), from a sub-grid of at most :data:`SAMPLE_VOXELS` input voxels.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.network.domain import QUANTILES, StudyGeometry, input_pattern
from BreastCMSLLib.pipeline.model_phases import PhasesUsed

SAMPLE_VOXELS = 200_000  # the quantiles and the coverage are read on a regular sub-grid of about this many voxels
PLANES = ("sagittal", "coronal", "axial")  # slices stacked along L, P or S
BILATERAL_MM = 200.0  # a breast mask at least this wide left to right, or in two parts, covers both breasts
GAP_MM = 10.0  # a left-right gap in the mask at least this wide separates two breasts


def acquisition_plane(direction: tuple[float, ...]) -> str:
    """The plane of a volume's slices: its third index axis (the slice normal) nearest L, P or S."""
    normal = np.abs(np.reshape(direction, (3, 3))[:, 2])
    return PLANES[int(np.argmax(normal))]


def coverage(mask_ijk: np.ndarray, spacing_i: float) -> str:
    """"bilateral" when the breast mask (I, J, K) is at least :data:`BILATERAL_MM` wide along i (left-right) or
    falls into parts separated by :data:`GAP_MM`, else "single"."""
    columns = np.flatnonzero(mask_ijk.any(axis=(1, 2)))
    if columns.size == 0:
        return "single"
    width = (columns[-1] - columns[0] + 1) * spacing_i
    gap = (np.diff(columns).max(initial=1) - 1) * spacing_i
    return "bilateral" if width >= BILATERAL_MM or gap >= GAP_MM else "single"


def study_geometry(reference: sitk.Image, array: np.ndarray, mask: sitk.Image, used: PhasesUsed) -> StudyGeometry:
    """The :class:`StudyGeometry` of a preprocessed case: its ``reference`` volume, network input ``array``
    (C, I, J, K) and breast ``mask`` on the input grid, and the phases ``used``."""
    lps_axis = np.argmax(np.abs(np.reshape(reference.GetDirection(), (3, 3))), axis=0)  # of each index axis
    spacing, fov = np.zeros(3), np.zeros(3)
    spacing[lps_axis] = reference.GetSpacing()
    fov[lps_axis] = np.multiply(reference.GetSpacing(), reference.GetSize())
    step = max(1, round((float(np.prod(array.shape[1:])) / SAMPLE_VOXELS) ** (1 / 3)))
    inside = sitk.GetArrayViewFromImage(mask)[::step, ::step, ::step].T.astype(bool)  # (i, j, k)
    values = array[:, ::step, ::step, ::step][:, inside]  # (C, N)
    enhancement = tuple(tuple(float(v) for v in np.quantile(channel, QUANTILES)) if channel.size
                        else (0.0,) * len(QUANTILES) for channel in values)
    return StudyGeometry(tuple(spacing.tolist()), tuple(fov.tolist()), acquisition_plane(reference.GetDirection()),
                         coverage(inside, mask.GetSpacing()[0] * step), used.phases, used.of, used.rule,
                         used.times_s, enhancement, input_pattern(enhancement, values, inside))
