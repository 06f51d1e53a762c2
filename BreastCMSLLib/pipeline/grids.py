"""Values of one volume on another volume's grid: an exact voxel copy where the voxel lattices coincide,
SimpleITK resampling (identity transform in LPS) otherwise.

Arrays here are (I, J, K) of the grid they live on (SimpleITK's own arrays are (K, J, I)). Both paths
put 0 where the grid lies outside the volume.

Why a hand-written copy beside ``sitk.Resample``: where voxel centres coincide (the usual case: the
crop/pad window of the input grid on the reference volume, reorientation, and the way back) a
resampling is a signed axis permutation plus an integer shift, i.e. a strided numpy slice. SimpleITK's
Resample still maps every voxel through the transform, 15 volumes per analysis (timings:
``benchmarks/README.md``); the slice copy is exact by construction and also does the (K, J, I) -> (I, J, K)
transposition and the dtype conversion in the same pass.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _index_map(src: sitk.Image, dst: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(A, b): continuous src index = A @ dst index + b (both images' geometry, LPS)."""
    m_src = np.reshape(src.GetDirection(), (3, 3)) * np.array(src.GetSpacing())
    m_dst = np.reshape(dst.GetDirection(), (3, 3)) * np.array(dst.GetSpacing())
    a = np.linalg.solve(m_src, m_dst)
    b = np.linalg.solve(m_src, np.subtract(dst.GetOrigin(), src.GetOrigin()))
    return a, b


def lattice_aligned(src: sitk.Image, dst: sitk.Image) -> bool:
    """True when every voxel centre of ``dst`` is a voxel centre of ``src`` (same spacing and axes up to
    a permutation and flips, integer offset): resampling is then an exact copy of voxels."""
    a, b = _index_map(src, dst)
    signed_permutation = np.allclose(np.abs(a).sum(axis=0), 1, atol=1e-6) and np.allclose(np.abs(a).max(axis=0), 1,
                                                                                         atol=1e-6)
    return bool(signed_permutation and np.allclose(b, np.round(b), atol=1e-4))


def _lattice_slices(src: sitk.Image, dst: sitk.Image):
    """For lattices that coincide: (src axis of each dst axis, src slices in that axis order, dst
    slices) of the overlap, or ``()`` when they do not overlap; None when the lattices do not coincide."""
    if not lattice_aligned(src, dst):
        return None
    a, b = _index_map(src, dst)
    axes = np.abs(a).argmax(axis=0)  # dst axis n steps along src axis axes[n], by sign a[axes[n], n]
    src_slices, dst_slices = [], []
    for n, axis in enumerate(axes):
        size, length, offset = dst.GetSize()[n], src.GetSize()[axis], int(np.rint(b[axis]))
        if a[axis, n] > 0:  # src index = offset + g
            lo, hi = max(0, -offset), min(size, length - offset)
            src_slices.append(slice(lo + offset, hi + offset))
        else:  # src index = offset - g
            lo, hi = max(0, offset - length + 1), min(size, offset + 1)
            src_slices.append(slice(offset - lo, offset - hi if offset - hi >= 0 else None, -1))
        if hi <= lo:
            return ()
        dst_slices.append(slice(lo, hi))
    return tuple(int(x) for x in axes), tuple(src_slices), tuple(dst_slices)


def copy_onto(src_ijk: np.ndarray, src: sitk.Image, dst: sitk.Image, out: np.ndarray) -> bool:
    """Write ``src_ijk`` (an (I, J, K) array with ``src``'s geometry) into ``out`` ((I, J, K) of ``dst``),
    0 where ``dst`` lies outside ``src``. Returns False, writing nothing, unless the lattices coincide."""
    plan = _lattice_slices(src, dst)
    if plan is None:
        return False
    if not plan or any(s.stop - s.start != n for s, n in zip(plan[2], out.shape)):
        out[...] = 0
    if plan:
        axes, src_slices, dst_slices = plan
        out[dst_slices] = src_ijk.transpose(axes)[src_slices]
    return True


def overlap_box(src: sitk.Image, dst: sitk.Image) -> tuple[slice, slice, slice] | None:
    """The voxels of ``dst`` inside ``src`` (those :func:`coverage` marks True) as one box of (I, J, K) slices of
    ``dst``, where the lattices coincide and overlap; None otherwise."""
    plan = _lattice_slices(src, dst)
    return plan[2] if plan else None


def same_grid(src: sitk.Image, dst: sitk.Image) -> bool:
    """True when both images have the same size and every index is the same LPS point in both."""
    if src.GetSize() != dst.GetSize():
        return False
    a, b = _index_map(src, dst)
    return bool(np.allclose(a, np.eye(3), atol=1e-6) and np.allclose(b, 0.0, atol=1e-4))


def resample(image: sitk.Image, grid: sitk.Image, label: bool = False) -> sitk.Image:
    """``image`` resampled onto ``grid``'s geometry, 0 outside: uint8 nearest for labels, else float32
    linear (nearest where the voxel centres coincide: the same values; the image itself, cast, on its own grid)."""
    pixel = sitk.sitkUInt8 if label else sitk.sitkFloat32
    if same_grid(image, grid):
        return image if image.GetPixelID() == pixel else sitk.Cast(image, pixel)
    interpolator = sitk.sitkNearestNeighbor if label or lattice_aligned(image, grid) else sitk.sitkLinear
    return sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, pixel)


def values_on(image: sitk.Image, grid: sitk.Image, label: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """``image``'s values on ``grid`` as an (I, J, K) array (``out`` if given), float32 (uint8 for labels);
    an exact voxel copy where the lattices coincide, else :func:`resample`."""
    if out is None:
        out = np.empty(grid.GetSize(), np.uint8 if label else np.float32)
    if not copy_onto(sitk.GetArrayViewFromImage(image).T, image, grid, out):
        resampled = resample(image, grid, label)  # named: the array view must not outlive the image
        out[...] = sitk.GetArrayViewFromImage(resampled).T
    return out


def coverage(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """bool (I, J, K) of ``grid``: True where the voxel lies inside ``image``'s voxel lattice."""
    out = np.empty(grid.GetSize(), bool)
    if not copy_onto(np.broadcast_to(True, image.GetSize()), image, grid, out):
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        out[...] = sitk.GetArrayFromImage(resample(ones, grid, label=True)).T.astype(bool)
    return out


def image_from_ijk(array_ijk: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """A SimpleITK image of an (I, J, K) array with ``grid``'s geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)))
    image.CopyInformation(grid)
    return image
