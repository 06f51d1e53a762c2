"""The peak of a map: one well-defined point even when the maximum is a plateau.

Rule. The plateau is every voxel whose value equals the maximum (exactly; over the ``valid`` voxels
when a mask is given). The peak is the plateau voxel nearest (in LPS mm) to the plateau's centroid
(LPS mm); equal distances go to the smallest L, then P, then S coordinate. Every step is physical, so
the same map stored with flipped or permuted axes gives the same LPS point, and that point is a voxel
of the plateau (the map's value there is its maximum). A single maximum is its own peak.

Why plateaus occur: COAM and CAM live on the network's coarse feature grid, which is extended by an
edge-replicated layer before linear interpolation onto the input grid (:func:`BreastCMSLLib.pipeline.maps.
upsample_linear`); when the maximum is an outer feature, every input voxel beyond that feature
centre carries the same maximal value. The first voxel of such a plateau in index order (``argmax``)
depends on how the volume is stored and is often a corner of the volume.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def true_indices(hits: np.ndarray) -> np.ndarray:
    """(n, 3) indices (i, j, k) of the True voxels of a 3D array in index order (i slowest). flatnonzero +
    unravel_index: a tenth of argwhere's time; a Fortran-ordered array (a map from ``upsample_linear``) is scanned in
    its own memory order and its few indices sorted, instead of being copied into C order first."""
    if hits.flags.c_contiguous or not hits.flags.f_contiguous:
        return np.column_stack(np.unravel_index(np.flatnonzero(hits), hits.shape))
    found = np.column_stack(np.unravel_index(np.flatnonzero(hits.T), hits.T.shape))[:, ::-1]  # scanned k slowest
    return found[np.lexsort(found.T[::-1])]


def plateau_peak_index(values: np.ndarray, grid: sitk.Image,
                       valid: np.ndarray | tuple[slice, ...] | None = None) -> tuple[int, ...]:
    """Index of the peak (rule above) of ``values`` laid out in ``grid``'s index order (i, j, k).

    ``values`` (I, J, K) on ``grid`` (only its spacing, origin and direction are used); ``valid`` the voxels that
    count (at least one), optional: a boolean (I, J, K) mask, or a box of (I, J, K) slices (a view, no masked copy).
    """
    offset = 0
    if isinstance(valid, tuple):
        offset, values, valid = [s.start for s in valid], values[valid], None
    masked = values if valid is None else np.where(valid, values, -np.inf)
    plateau = true_indices(masked == masked.max()) + offset
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


def quadratic_peak(values: np.ndarray) -> np.ndarray:
    """Sub-voxel maximum of a small (feature-grid) map, continuous index (i, j, k): along each axis the
    parabola through the maximal voxel and its two neighbours, its vertex (at most half a voxel away; no
    shift along an axis where the maximum is an outer voxel or the parabola is not concave)."""
    top = np.array(np.unravel_index(int(np.argmax(values)), values.shape))
    shift = np.zeros(3)
    for axis in range(3):
        if 0 < top[axis] < values.shape[axis] - 1:
            lo, hi = top.copy(), top.copy()
            lo[axis] -= 1
            hi[axis] += 1
            a, b, c = float(values[tuple(lo)]), float(values[tuple(top)]), float(values[tuple(hi)])
            curvature = a - 2 * b + c
            if curvature < 0:
                shift[axis] = np.clip(0.5 * (a - c) / curvature, -0.5, 0.5)
    return top + shift


def centroid_peak(values: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Weighted centroid, continuous index (i, j, k), of the top region of a small map: the 26-connected
    component holding the maximum of the voxels above ``fraction`` of the way from minimum to maximum,
    each weighted by its height above that level."""
    from scipy import ndimage

    lo, hi = float(values.min()), float(values.max())
    level = lo + fraction * (hi - lo)
    labels, _ = ndimage.label(values >= level, structure=np.ones((3, 3, 3)))
    region = labels == labels[np.unravel_index(int(np.argmax(values)), values.shape)]
    weights = np.where(region, values - level, 0.0)
    if weights.sum() <= 0:
        return np.array(np.unravel_index(int(np.argmax(values)), values.shape), dtype=float)
    return np.array(ndimage.center_of_mass(weights))


def stage_point_lps(index, stride: int, grid: sitk.Image) -> tuple[float, float, float]:
    """LPS point (mm) of a continuous index on a stage's feature grid (voxel u centred on input voxel
    ``stride`` u of the input ``grid``)."""
    return tuple(grid.TransformContinuousIndexToPhysicalPoint([float(stride * v) for v in index]))
