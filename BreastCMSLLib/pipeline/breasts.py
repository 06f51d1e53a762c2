"""Per-breast units: the midline between the breasts in a breast mask, one breast's half of the mask, and the
mirrored input grid that puts a left breast in a right breast's orientation.

Frames: arrays are (I, J, K) on the canonical axial LPS grid (i -> patient Left, so the right breast lies at
small i); the midline is a fractional column i. The midline is where the number of mask voxels per sagittal
plane dips between the breasts: among the columns of the central half of the mask's left-right extent, those
below :data:`DIP_LEVEL` of the profile's maximum form a run around the minimum (the sternum's flat stretch with
the breasts' inner edges), and the midline is that run's centre; no midline where the dip does not fall below
:data:`DIP_DEPTH` of the maximum (one breast in view).

A left breast is mirrored onto the right's orientation by its input grid, not by flipping arrays: the grid's
i axis points to the patient's right (its direction's first column negated, its origin at the far corner), so
index i runs from the lateral side towards the midline for both breasts; resampling onto it copies voxels
exactly, and maps carried back through the grid's geometry land unmirrored on the study.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.errors import InputError

BREAST_INPUT_SIZE = (170, 220, 128)  # voxels (i, j, k): the paper's bilateral 340 x 220 x 128 cut to one breast
BREASTS = ("left", "right", "single")
DIP_LEVEL = 0.25  # columns below this share of the profile's maximum belong to the dip
DIP_DEPTH = 0.5  # the dip must fall below this share of the profile's maximum, else there is no midline


def profile_midline(profile: np.ndarray) -> float | None:
    """Fractional column of the dip between the breasts in a per-column mask count, or None (see the module)."""
    cols = np.flatnonzero(profile > 0)
    if cols.size < 4:
        return None
    lo, hi = cols[0], cols[-1]
    quarter = (hi - lo) / 4.0
    a, b = int(np.ceil(lo + quarter)), int(np.floor(hi - quarter))
    centre = profile[a:b + 1].astype(float)
    if centre.size == 0 or centre.min() > DIP_DEPTH * profile.max():
        return None
    low = centre <= DIP_LEVEL * profile.max()
    m = int(np.argmin(centre))
    left, right = m, m
    while left > 0 and low[left - 1]:
        left -= 1
    while right < centre.size - 1 and low[right + 1]:
        right += 1
    return a + (left + right) / 2.0


def mask_midline(mask_ijk: np.ndarray) -> float:
    """The midline column of a bilateral breast mask (I, J, K); the volume's centre column where it has none."""
    column = profile_midline(mask_ijk.sum(axis=(1, 2)))
    return (mask_ijk.shape[0] - 1) / 2.0 if column is None else column


def unit_breast(extra: dict | None, unit: str, source) -> str | None:
    """The breast a case is for a per-breast model (``unit == "breast"``): case.json's ``breast``; None for a
    whole-study model. An :class:`InputError` naming ``source`` where a per-breast model gets no breast."""
    if unit == "whole":
        return None
    breast = (extra or {}).get("breast")
    if breast not in BREASTS:
        raise InputError(source, f"a per-breast model needs the breast this case is (case.json \"breast\": "
                         f"{', '.join(BREASTS)}; breastcmsl-train ingest-mama-mia or ingest --unit breast write it), "
                         f"got {breast!r}")
    return breast


def breast_half(mask_ijk: np.ndarray, breast: str) -> np.ndarray:
    """``mask_ijk`` with everything beyond the midline removed: only the ``breast`` (``single``: all of it)."""
    if breast == "single":
        return mask_ijk
    columns = np.arange(mask_ijk.shape[0])[:, None, None]
    midline = mask_midline(mask_ijk)
    return mask_ijk & ((columns > midline) if breast == "left" else (columns < midline))


def mirrored(grid: sitk.Image) -> sitk.Image:
    """The same voxels as ``grid`` with the i axis reversed (see the module)."""
    out = sitk.Image(grid.GetSize(), grid.GetPixelID())
    out.SetSpacing(grid.GetSpacing())
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    direction[:, 0] *= -1
    out.SetOrigin(grid.TransformIndexToPhysicalPoint((grid.GetSize()[0] - 1, 0, 0)))
    out.SetDirection(direction.ravel().tolist())
    return out
