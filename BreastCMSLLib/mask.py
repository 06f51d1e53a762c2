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
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .config import MaskConfig

DEFAULT_MASK_CONFIG = MaskConfig()


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """2D hole filling: background components that do not touch the slice border become foreground.
    (SimpleITK's BinaryFillhole gives the same result but is ~10x slower on slices.)"""
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((~mask).astype(np.uint8))))
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ~np.isin(labels, border)


def _last_true(mask: np.ndarray) -> np.ndarray:
    """Per column, the largest row index where ``mask`` is true, -1 where it never is."""
    rows = mask.shape[0]
    found = mask.any(axis=0)
    return np.where(found, rows - 1 - mask[::-1].argmax(axis=0), -1)


def _chest_wall_limit(vesselness: np.ndarray, edges: np.ndarray, body: np.ndarray, cfg: MaskConfig,
                      spacing) -> np.ndarray | None:
    """Posterior limit per column (i) of one slice, in fractional j (None if no column has one).

    In each column the chest-wall edge is the last edge run before the thoracic cavity (the first large
    dark non-body region posterior to the skin, i.e. the lungs); the limit is where the vesselness
    reaches ``edge_threshold`` at the anterior end of that run (linear sub-pixel crossing), shifted by
    ``offset_mm``. Columns without one are interpolated, then the limit is median-filtered over
    ``limit_median_mm`` of columns (robust to a broken edge or a fibroglandular strand).
    """
    rows = np.arange(body.shape[0])[:, None]
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(
        sitk.ConnectedComponent(sitk.GetImageFromArray((~body).astype(np.uint8))),
        minimumObjectSize=int(np.ceil(cfg.min_cavity_mm2 / (spacing[0] * spacing[1])))))
    air = np.unique(labels[0])  # the anterior border row is air in a breast exam
    skin = body.argmax(axis=0)
    cavity = (labels > 0) & ~np.isin(labels, air) & (rows > skin[None, :])
    lung = np.where(cavity.any(axis=0), cavity.argmax(axis=0), -1)
    last = _last_true(edges & (rows < lung[None, :]))
    start = _last_true(~edges & (rows <= last[None, :])) + 1
    columns = np.flatnonzero((lung >= 0) & (last >= 0) & (start > 0))
    if columns.size == 0:
        return None
    first = start[columns]
    v0, v1 = vesselness[first - 1, columns], vesselness[first, columns]
    crossing = first - np.clip((v1 - cfg.edge_threshold) / np.maximum(v1 - v0, 1e-6), 0, 1)
    limit = np.interp(np.arange(body.shape[1]), columns, crossing)
    half = round(cfg.limit_median_mm / spacing[0] / 2)
    if half:
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(limit, half, mode="edge"), 2 * half + 1)
        limit = np.median(windows, axis=1)
    return limit + cfg.offset_mm / spacing[1]


def breast_mask(t1: sitk.Image, cfg: MaskConfig = DEFAULT_MASK_CONFIG) -> sitk.Image:
    """Binary breast mask (uint8 0/1) on ``t1``'s grid; ``t1`` on the canonical axial grid (see module)."""
    t1 = sitk.Cast(t1, sitk.sitkFloat32)
    spacing = t1.GetSpacing()
    shrink = [max(1, round(cfg.work_spacing_mm / spacing[a])) for a in range(2)] + [1]
    work = sitk.BinShrink(t1, shrink) if max(shrink) > 1 else t1
    scale = float(np.percentile(sitk.GetArrayViewFromImage(work)[:, ::2, ::2], 99)) or 1.0
    # Scale-normalized Hessian: intensities relative to fat times sigma^2 make gamma dimensionless.
    work = sitk.Cast(work * (cfg.sigma_mm ** 2 / scale), sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(work)
    body = values > cfg.body_fraction * cfg.sigma_mm ** 2  # outer outline of the region
    tissue = values > cfg.tissue_fraction * cfg.sigma_mm ** 2  # not air, not lung (edges, cavity)
    wspacing = work.GetSpacing()
    rows = np.arange(body.shape[1], dtype=np.float64)[:, None]
    min_edge_pixels = int(np.ceil(cfg.min_component_mm2 / (wspacing[0] * wspacing[1])))
    regions = np.zeros(body.shape, np.float32)
    for k in range(work.GetSize()[2]):
        smooth = sitk.SmoothingRecursiveGaussian(work[:, :, k], cfg.sigma_mm)
        vesselness = sitk.GetArrayFromImage(sitk.ObjectnessMeasure(
            smooth, alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma, scaleObjectnessMeasure=False,
            objectDimension=1, brightObject=False))
        edges = sitk.BinaryThreshold(sitk.GetImageFromArray(vesselness), cfg.edge_threshold, 1e30, 1, 0)
        edges = sitk.RelabelComponent(sitk.ConnectedComponent(edges * sitk.GetImageFromArray(
            tissue[k].astype(np.uint8))), minimumObjectSize=min_edge_pixels)
        limit = _chest_wall_limit(vesselness, sitk.GetArrayViewFromImage(edges) > 0, tissue[k], cfg, wspacing)
        if limit is not None:  # fraction of each voxel (rows j - 0.5 .. j + 0.5) anterior to the limit
            regions[k] = _fill_holes(body[k]) * np.clip(limit[None, :] - rows + 0.5, 0.0, 1.0)
    stacked = sitk.GetImageFromArray(regions)
    stacked.CopyInformation(work)
    smooth = sitk.SmoothingRecursiveGaussian(stacked, cfg.smooth_sigma_mm)
    resample = sitk.ResampleImageFilter()
    resample.SetReferenceImage(t1)
    resample.SetInterpolator(sitk.sitkLinear)
    resample.SetUseNearestNeighborExtrapolator(True)  # the binned grid stops up to half a bin short
    back = resample.Execute(smooth)
    return sitk.BinaryThreshold(back, cfg.rebinarize, 1e30, 1, 0)
