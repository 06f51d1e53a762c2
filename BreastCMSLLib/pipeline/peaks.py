"""The peak of a map: one well-defined point even when the maximum is a plateau.

Rule. The plateau is every voxel whose value equals the maximum (exactly; over the ``valid`` voxels
when a mask is given). The peak is the plateau voxel nearest (in LPS mm) to the plateau's centroid
(LPS mm); equal distances go to the smallest L, then P, then S coordinate. Every step is physical, so
the same map stored with flipped or permuted axes gives the same LPS point, and that point is a voxel
of the plateau (the map's value there is its maximum). A single maximum is its own peak.

Why plateaus occur: COAM and CAM live on the network's coarse feature grid, which is extended by an
edge-replicated layer before linear resampling onto the input grid (:func:`BreastCMSLLib.pipeline.analyze.
feature_map_image`); when the maximum is an outer feature, every input voxel beyond that feature
centre carries the same maximal value. The first voxel of such a plateau in index order (``argmax``)
depends on how the volume is stored and is often a corner of the volume.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def plateau_peak_index(values: np.ndarray, grid: sitk.Image, valid: np.ndarray | None = None) -> tuple[int, ...]:
    """Index of the peak (rule above) of ``values`` laid out in ``grid``'s index order (i, j, k).

    ``values`` (I, J, K) on ``grid`` (only its spacing, origin and direction are used); ``valid`` an
    optional boolean (I, J, K) mask of the voxels that count (at least one must be True).
    """
    masked = values if valid is None else np.where(valid, values, -np.inf)
    top = masked.max()
    # (n, 3) indices (i, j, k); flatnonzero + unravel_index: a tenth of argwhere's time on a 10 M-voxel map
    plateau = np.column_stack(np.unravel_index(np.flatnonzero(masked == top), masked.shape))
    if len(plateau) == 1:
        return tuple(int(v) for v in plateau[0])
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    points = np.asarray(grid.GetOrigin()) + (plateau * np.asarray(grid.GetSpacing())) @ direction.T  # LPS mm
    distance = np.linalg.norm(points - points.mean(axis=0), axis=1)
    nearest = np.flatnonzero(distance <= distance.min() + 1e-6)  # ties within a micrometre
    best = nearest[np.lexsort(points[nearest].T[::-1])[0]]  # smallest L, then P, then S
    return tuple(int(v) for v in plateau[best])


def plateau_peak_lps(values: np.ndarray, grid: sitk.Image, valid: np.ndarray | None = None) -> tuple[float, ...]:
    """LPS point (mm) of :func:`plateau_peak_index`."""
    return tuple(grid.TransformIndexToPhysicalPoint(plateau_peak_index(values, grid, valid)))
