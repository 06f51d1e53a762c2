"""Breast mask from the non-fat-suppressed T1 (Luo et al. 2019, section 3.1: slice-wise Frangi edges,
thresholding, small-component removal, hole filling, stacking, 3D Gaussian smoothing).

Input: the T1 on the canonical axial LPS grid (slices along k, i -> patient Left, j -> Posterior).
Per axial slice, on an in-plane grid of about ``work_spacing_mm``:

1. body: voxels brighter than ``body_fraction`` of the volume's 99th percentile (fat is the brightest
   tissue on a non-fat-suppressed T1), holes filled; tissue: brighter than ``tissue_fraction`` (not air,
   not lung; lower, so that a dark muscle under a strong bias field stays tissue);
2. edges: Frangi vesselness of dark line-like structures (SimpleITK ``ObjectnessMeasure`` on the slice
   smoothed at ``sigma_mm``) in tissue, thresholded at ``edge_threshold``; connected components smaller
   than ``min_component_mm2`` are removed;
3. chest wall: in each column (i), the last edge run before the thoracic cavity (lungs: the first large
   dark region posterior to the skin) is the dark muscle band of the chest wall (pectoral muscle)
   between the breast and the ribs; see :func:`_chest_wall_limit`;
4. breast region: body voxels (holes filled) anterior to that edge, as partial-voxel fractions.

The slices are stacked, smoothed in 3D with ``smooth_sigma_mm``, brought back to the T1 grid (linear)
and re-binarized at ``rebinarize``. The heart, lungs and ribs lie posterior to the chest wall edge and
are excluded.

Without a T1 (``fat_suppressed=True``: the fat-suppressed pre-contrast phase) the same steps run with
one change: on a fat-suppressed image fat is dark and the pectoral muscle and chest wall are a *bright*
band between the dark retromammary fat and the dark lungs, so step 2 looks for bright line-like
structures (``ObjectnessMeasure`` with ``brightObject``) and step 3 takes the last bright run before
the thoracic cavity, i.e. the muscle band, as the chest wall. Body and tissue thresholds stay relative
to the 99th percentile (on a fat-suppressed image the brightest tissue is gland, skin or vessels;
suppressed fat stays well above air). Bright glandular strands that touch the chest wall, or a heart
flush against it, can move the limit, so the T1 stays preferred when there is one.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.config import MaskConfig

DEFAULT_MASK_CONFIG = MaskConfig()


def _slice_labels(mask: np.ndarray, min_pixels: int = 0) -> np.ndarray:
    """2D connected components (4-connected) of every axial slice of ``mask`` (k, j, i) in one SimpleITK
    call: empty separator slices between the slices keep 3D face connectivity within each slice.
    Components smaller than ``min_pixels`` are dropped (label 0)."""
    stack = np.zeros((2 * mask.shape[0] - 1, *mask.shape[1:]), np.uint8)
    stack[::2] = mask
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(stack)),
                                   minimumObjectSize=min_pixels)
    return sitk.GetArrayFromImage(labels)[::2]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Slice-wise hole filling: background components that do not touch their slice's border become
    foreground (SimpleITK's BinaryFillhole gives the same per slice but is ~10x slower on slices)."""
    labels = _slice_labels(~mask)
    border = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    return mask | ~np.isin(labels, border)


def _last_true(mask: np.ndarray, axis: int = 1) -> np.ndarray:
    """Largest index along ``axis`` where ``mask`` is true, -1 where it never is."""
    n = mask.shape[axis]
    return np.where(mask.any(axis=axis), n - 1 - np.flip(mask, axis=axis).argmax(axis=axis), -1)


def _chest_wall_limit(vesselness: np.ndarray, edges: np.ndarray, tissue: np.ndarray, cfg: MaskConfig,
                      spacing) -> np.ndarray:
    """Posterior limit per slice and column, (k, i), in fractional j; NaN where no slice has one.

    In each column the chest-wall edge is the last edge run before the thoracic cavity (the first large
    dark non-tissue region posterior to the skin, i.e. the lungs); the limit is where the vesselness
    reaches ``edge_threshold`` at the anterior end of that run (linear sub-pixel crossing), shifted by
    ``offset_mm``. Columns without one are interpolated from the other columns of the slice, slices
    without one from the nearest slices; then the limit is median-filtered over ``limit_median_mm`` of
    columns (robust to a broken edge or a fibroglandular strand).
    """
    rows = np.arange(tissue.shape[1])[None, :, None]
    labels = _slice_labels(~tissue, int(np.ceil(cfg.min_cavity_mm2 / (spacing[0] * spacing[1]))))
    air = np.unique(labels[:, 0])  # the anterior border row is air in a breast exam
    skin = tissue.argmax(axis=1)[:, None, :]
    cavity = (labels > 0) & ~np.isin(labels, air) & (rows > skin)
    lung = np.where(cavity.any(axis=1), cavity.argmax(axis=1), -1)[:, None, :]
    last = _last_true(edges & (rows < lung))[:, None, :]
    start = _last_true(~edges & (rows <= last)) + 1
    valid = (lung[:, 0] >= 0) & (last[:, 0] >= 0) & (start > 0)
    first = np.maximum(start, 1)[:, None, :]
    v0 = np.take_along_axis(vesselness, first - 1, axis=1)[:, 0]
    v1 = np.take_along_axis(vesselness, first, axis=1)[:, 0]
    crossing = first[:, 0] - np.clip((v1 - cfg.edge_threshold) / np.maximum(v1 - v0, 1e-6), 0, 1)
    columns = np.arange(tissue.shape[2])
    limit = np.full(crossing.shape, np.nan)
    for k in np.flatnonzero(valid.any(axis=1)):
        limit[k] = np.interp(columns, columns[valid[k]], crossing[k, valid[k]])
    found = ~np.isnan(limit[:, 0])
    if found.any() and not found.all():  # slices without an edge: the limit of the nearest slices with one
        slices = np.arange(limit.shape[0])
        for i in columns:
            limit[~found, i] = np.interp(slices[~found], slices[found], limit[found, i])
    half = round(cfg.limit_median_mm / spacing[0] / 2)
    if half:
        padded = np.pad(limit, ((0, 0), (half, half)), mode="edge")
        limit = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1, axis=1), axis=2)
    return limit + cfg.offset_mm / spacing[1]


def slice_objectness(slices: np.ndarray, spacing, cfg: MaskConfig, bright: bool) -> np.ndarray:
    """Frangi objectness of line-like structures (SimpleITK ``ObjectnessMeasure``, 2D) of every axial slice of
    ``slices`` (k, j, i), in-plane ``spacing`` (i, j) mm; returns float32 (k, j, i).

    One filter call on all slices stacked into one tall 2D image, each slice framed by a copy of its first and
    last row: the filter's 3x3 finite differences then see at a slice's edge what its zero-flux boundary gives
    the slice alone (tested equal, slice for slice). ITK runs the filter on all cores already, so Python threads
    over parts of the stack do not help; one call costs less than one per slice (``benchmarks/README.md``).
    """
    k, rows, columns = slices.shape
    framed = np.concatenate([slices[:, :1], slices, slices[:, -1:]], axis=1).reshape(k * (rows + 2), columns)
    image = sitk.GetImageFromArray(framed)
    image.SetSpacing([float(s) for s in spacing])
    measure = sitk.ObjectnessMeasure(image, alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma,
                                     scaleObjectnessMeasure=False, objectDimension=1, brightObject=bright)
    return sitk.GetArrayFromImage(measure).reshape(k, rows + 2, columns)[:, 1:-1]


def breast_mask(t1: sitk.Image, cfg: MaskConfig = DEFAULT_MASK_CONFIG, fat_suppressed: bool = False) -> sitk.Image:
    """Binary breast mask (uint8 0/1) on ``t1``'s grid; ``t1`` on the canonical axial grid (see module).
    ``fat_suppressed``: the image is a fat-suppressed pre-contrast phase (or subtraction), not a T1."""
    t1 = sitk.Cast(t1, sitk.sitkFloat32)
    spacing = t1.GetSpacing()
    shrink = [max(1, round(cfg.work_spacing_mm / spacing[a])) for a in range(2)] + [1]
    work = sitk.BinShrink(t1, shrink) if max(shrink) > 1 else t1
    scale = float(np.percentile(sitk.GetArrayViewFromImage(work)[:, ::2, ::2], 99)) or 1.0
    # Scale-normalized Hessian: intensities relative to fat times sigma^2 make gamma dimensionless.
    work = sitk.Cast(work * (cfg.sigma_mm ** 2 / scale), sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(work)
    body = _fill_holes(values > cfg.body_fraction * cfg.sigma_mm ** 2)  # outer outline of the region
    tissue = values > cfg.tissue_fraction * cfg.sigma_mm ** 2  # not air, not lung (edges, cavity)
    smooth = work  # in-plane Gaussian of every slice at once: x then y
    for axis in (0, 1):
        smooth = sitk.RecursiveGaussian(smooth, cfg.sigma_mm, False, sitk.RecursiveGaussianImageFilter.ZeroOrder,
                                        axis)
    vesselness = slice_objectness(sitk.GetArrayFromImage(smooth), smooth.GetSpacing()[:2], cfg, fat_suppressed)
    wspacing = work.GetSpacing()
    edges = _slice_labels((vesselness > cfg.edge_threshold) & tissue,
                          int(np.ceil(cfg.min_component_mm2 / (wspacing[0] * wspacing[1])))) > 0
    limit = _chest_wall_limit(vesselness, edges, tissue, cfg, wspacing)
    rows = np.arange(body.shape[1])[None, :, None]
    # fraction of each voxel (rows j - 0.5 .. j + 0.5) anterior to the limit; empty where there is none
    regions = body * np.clip(np.nan_to_num(limit, nan=-1.0)[:, None, :] - rows + 0.5, 0.0, 1.0)
    stacked = sitk.GetImageFromArray(regions.astype(np.float32))
    stacked.CopyInformation(work)
    smooth = sitk.SmoothingRecursiveGaussian(stacked, cfg.smooth_sigma_mm)
    resample = sitk.ResampleImageFilter()
    resample.SetReferenceImage(t1)
    resample.SetInterpolator(sitk.sitkLinear)
    resample.SetUseNearestNeighborExtrapolator(True)  # the binned grid stops up to half a bin short
    back = resample.Execute(smooth)
    return sitk.BinaryThreshold(back, cfg.rebinarize, 1e30, 1, 0)
