"""A DICOM Segmentation as a region on an image grid (the FTV region of ``breastcmsl kinetics --roi-mask``).

highdicom reads the SEG's frames into one volume by their plane positions (``Segmentation.get_volume``); every
segment together is the region. It is carried onto the image grid by nearest-neighbour resampling in LPS, so a
SEG whose frames sit off the image's slices (half a voxel, say) takes the nearest slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from BreastCMSLLib.dicom.series import read_dataset, volume_to_image
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.grids import resample

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def is_segmentation(path: str | Path) -> bool:
    """True when ``path`` is a DICOM file of the Segmentation Storage SOP class."""
    try:
        ds = read_dataset(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
        return False
    return str(ds.get("SOPClassUID") or "") == SEGMENTATION_STORAGE


def segmentation_region(path: str | Path, grid: sitk.Image) -> np.ndarray:
    """bool (K, J, I) of ``grid``: where any segment of the DICOM SEG ``path`` is set."""
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(read_dataset(path))
        volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
    except (ValueError, RuntimeError, AttributeError, KeyError) as err:
        raise InputError(path, f"cannot be read as a DICOM Segmentation volume ({str(err)[:160]})") from None
    label = volume_to_image(volume)
    return sitk.GetArrayFromImage(resample(label > 0, grid, label=True)).astype(bool)
