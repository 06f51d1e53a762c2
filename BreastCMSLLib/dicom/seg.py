"""A map's labelmap (COAM, CAM or the fine map) as a DICOM Segmentation (highdicom) that references the source
series.

The labelmap lies on the reference phase's grid (``analyze`` keeps every map there), so each source
image (slice, or frame of an enhanced image) is one segmentation frame: we find its slice of the
labelmap from its ImagePositionPatient (LPS mm, as :mod:`.dicom` parsed it) and never resample.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from BreastCMSLLib.dicom.series import Phase, source_datasets
from BreastCMSLLib.errors import InputError


def _file_positions(phase: Phase) -> list[list[tuple[float, float, float]]]:
    """ImagePositionPatient (LPS mm) of every frame of each of ``phase``'s files (in :func:`source_datasets`
    order), frame by frame, as the scan parsed them. A multi-frame file may also hold frames of the
    series' other phases: a segmentation frame is due for each of them too."""
    frames = {path: [] for path in sorted({f.path for f in phase.frames})}
    for f in (f for p in phase.series.phases for f in p.frames if f.path in frames):
        frames[f.path].append(f)
    return [[f.position for f in sorted(file_frames, key=lambda f: f.frame or 0)] for file_frames in frames.values()]


def _slice_index(label: sitk.Image, position, source: str) -> int:
    index = np.asarray(label.TransformPhysicalPointToContinuousIndex(position))
    k = round(float(index[2]))
    if np.abs(index[:2]).max() > 1e-3 or abs(index[2] - k) > 1e-3 or not 0 <= k < label.GetSize()[2]:
        raise InputError(source, f"the labelmap is not on this series' grid (image position {position} maps to "
                         f"voxel index {np.round(index, 3).tolist()})")
    return k


MAP_TITLES = {"coam": "COAM", "cam": "CAM", "fine": "fine map"}


def map_segmentation(label: sitk.Image, phase: Phase, map_name: str = "coam", software_version: str = "0",
                     series_number: int = 9901):
    """A binary highdicom ``Segmentation`` of ``label`` (uint8 0/1 on ``phase``'s grid) over ``phase``'s images;
    ``map_name`` (a key of :data:`MAP_TITLES`) names the map it labels."""
    import highdicom as hd

    source = f"series {phase.label} '{phase.series.description}'"
    images = source_datasets(phase)
    array = sitk.GetArrayViewFromImage(label)  # (k, j, i) = (slice, row, column)
    frames = np.stack([array[_slice_index(label, pos, source)] for positions in _file_positions(phase)
                       for pos in positions])
    if frames.shape[1:] != (int(images[0].Rows), int(images[0].Columns)):
        raise InputError(source, f"labelmap slices {frames.shape[1:]} differ from the images' rows x columns")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"BreastCMSL {MAP_TITLES[map_name]}", family=codes.cid7162.ArtificialIntelligence,
        version=software_version)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=f"{MAP_TITLES[map_name]} attention", algorithm_identification=algorithm,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC)
    return hd.seg.Segmentation(
        source_images=images, pixel_array=(frames > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=generate_uid(), series_number=series_number, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="BreastCMSL", manufacturer_model_name="BreastCMSL",
        software_versions=software_version, device_serial_number="none",
        series_description=f"BreastCMSL {MAP_TITLES[map_name]} labelmap (research use, not for diagnosis)",
        omit_empty_frames=False)

