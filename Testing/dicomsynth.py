"""Write volumes (e.g. a phantom case) as a DICOM MR study in the series layout of a vendor.

This exists so that the DICOM path (scan, role assignment, reading, DICOM SEG) can be tried and tested
without patient data. Styles (series descriptions and tags modelled on typical exports):

- ``siemens``: non-fat-suppressed ``t1_fl3d_tra_nonFS``; one series per dynamic phase, all called
  ``t1_fl3d_tra_dynaVIEWS_spair`` (ScanOptions ``FS``), told apart only by AcquisitionTime; plus the
  scanner's subtraction series (ImageType ``...\\SUB``) and a MIP of the first one.
- ``ge``: ``Ax T1 FSE`` (no fat suppression; FSE is not FS) and ONE multi-phase series
  ``Ax Vibrant MultiPhase`` holding pre and all post phases (TemporalPositionIdentifier, TriggerTime),
  and a ``3-Plane Loc`` localizer (three orientations in one series).
- ``philips``: ``T1W_TSE_tra`` and only scanner subtractions, one gzip-compressed series per phase
  ``SUB_eTHRIVE`` (ImageType ``DERIVED\\PRIMARY\\SUBTRACTION``), the T1 as an enhanced multi-frame file.
- ``duke``: the Duke-Breast-Cancer-MRI (TCIA) layout: ``SUBJECT/DATE-NA-MRI BREAST.../N.000000-DESC-xxxxx/
  1-NNN.dcm`` with descriptions ``ax t1``, ``ax dyn pre``, ``ax dyn 1st pass``, ... and instance numbers
  running against the slice position (as in many Duke series).

Voxel values are stored as uint16 with a per-series RescaleSlope/Intercept: integer volumes (the
phantom's) exactly, float volumes to 1/65535 of their range. Geometry is the image's LPS geometry exactly.
"""

from __future__ import annotations

import gzip
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SAGITTAL = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # i -> P, j -> I, k -> L
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)  # i -> L, j -> I, k -> P
ORDINALS = ("1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th", "9th")
STYLES = ("siemens", "ge", "philips", "duke")


@dataclass
class SeriesSpec:
    """One series to write: its phases (same grid) and the tags that distinguish it."""

    description: str
    volumes: list[sitk.Image]
    times_s: list[float]  # acquisition time of each phase, seconds after the study start
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    scan_options: str = ""
    temporal_tags: bool = False  # write TemporalPositionIdentifier, NumberOfTemporalPositions, TriggerTime
    one_acquisition_time: bool = False  # every phase gets the first AcquisitionTime (TriggerTime orders)
    gzip: bool = False
    enhanced: bool = False  # one Legacy Converted Enhanced MR file holding every phase (highdicom)
    reverse_instances: bool = False  # InstanceNumber runs against the slice position
    time_tags: str = "acquisition"  # "acquisition" (AcquisitionTime + ContentTime), "content" (only), "none"
    slice_time_s: float = 0.0  # AcquisitionTime/ContentTime step per slice within a phase (a phase spans time)
    whole_seconds: bool = False  # times as HHMMSS without fractions (as older GE scanners write them)
    acquisition_numbers: tuple[int, ...] = ()  # AcquisitionNumber per phase (GE: 1, 2, 2: no phase index)
    sop_class: str = MRImageStorage  # e.g. SecondaryCaptureImageStorage for a screen capture beside the MR
    folder: str = ""  # sub-folder of the study folder
    file_name: str = "IM{n:04d}.dcm"
    uid: str = field(default_factory=generate_uid)


def _with_direction(image: sitk.Image, direction: tuple[float, ...]) -> sitk.Image:
    out = sitk.Image(image)
    out.SetDirection(direction)
    return out


def _tm(seconds: float, whole: bool = False) -> str:
    seconds = 8 * 3600 + seconds  # the study starts at 08:00
    hh, rem = divmod(seconds, 3600)
    mm, ss = divmod(rem, 60)
    return f"{int(hh):02d}{int(mm):02d}" + (f"{int(ss):02d}" if whole else f"{ss:09.6f}")


def _study_tags(subject: str) -> dict:
    return {
        "PatientName": f"Phantom^{subject}", "PatientID": subject, "PatientBirthDate": "19700101",
        "PatientSex": "F", "StudyInstanceUID": generate_uid(), "StudyID": "1", "StudyDate": "20240101",
        "StudyTime": "080000", "ReferringPhysicianName": "", "AccessionNumber": "", "Modality": "MR",
        "FrameOfReferenceUID": generate_uid(), "BodyPartExamined": "BREAST", "PatientPosition": "HFP",
        "StudyDescription": "MRI BREAST BILATERAL W WO", "Manufacturer": "BreastCMSL phantom",
    }


def _slice_datasets(spec: SeriesSpec, number: int, study: dict) -> list[list[pydicom.Dataset]]:
    """Per phase, one single-frame MR dataset per slice (pixel data included)."""
    arrays = [sitk.GetArrayFromImage(v).astype(np.float64) for v in spec.volumes]  # (k, j, i)
    lo = min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    integral = all(np.array_equal(a, np.rint(a)) for a in arrays) and hi - lo <= 65535
    slope = 1.0 if integral or hi == lo else (hi - lo) / 65535.0  # integer voxels are stored exactly
    n_phases, n_images = len(arrays), sum(v.GetSize()[2] for v in spec.volumes)
    out = []
    for p, (array, ref) in enumerate(zip(arrays, spec.volumes, strict=True)):  # phases may differ in geometry
        size, spacing = ref.GetSize(), ref.GetSpacing()
        direction = np.asarray(ref.GetDirection()).reshape(3, 3)
        first = sum(v.GetSize()[2] for v in spec.volumes[:p])
        stored = np.clip(np.rint((array - lo) / slope), 0, 65535).astype(np.uint16)
        phase = []
        for k in range(size[2]):
            ds = pydicom.Dataset()
            ds.update({k_: v for k_, v in study.items() if k_ not in ("Manufacturer",)})
            ds.Manufacturer = study["Manufacturer"]
            ds.SOPClassUID = spec.sop_class
            ds.SOPInstanceUID = generate_uid()
            ds.SeriesInstanceUID = spec.uid
            ds.SeriesNumber = number
            ds.SeriesDescription = spec.description
            ds.ProtocolName = spec.description
            ds.SeriesTime = _tm(spec.times_s[0])
            ds.ImageType = list(spec.image_type)
            if spec.scan_options:
                ds.ScanOptions = spec.scan_options.split("\\")
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "3D"
            ds.ImageLaterality = "B"  # bilateral breast exam
            ds.RepetitionTime, ds.EchoTime, ds.FlipAngle, ds.MagneticFieldStrength = 4.5, 1.8, 10, 1.5
            ds.AcquisitionDate = ds.ContentDate = study["StudyDate"]
            step = spec.slice_time_s * k
            if spec.time_tags == "acquisition":
                ds.AcquisitionTime = _tm(spec.times_s[0 if spec.one_acquisition_time else p] + step, spec.whole_seconds)
            if spec.time_tags in ("acquisition", "content"):
                ds.ContentTime = _tm(spec.times_s[p] + (step or 0.01 * k), spec.whole_seconds)
            if spec.acquisition_numbers:
                ds.AcquisitionNumber = spec.acquisition_numbers[p]
            if spec.temporal_tags:
                ds.TriggerTime = 1000.0 * (spec.times_s[p] - spec.times_s[0])
                ds.TemporalPositionIdentifier = p + 1
                ds.NumberOfTemporalPositions = n_phases
            position = np.asarray(ref.GetOrigin()) + k * spacing[2] * direction[:, 2]
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
            ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (j), column spacing (i)
            ds.SliceThickness = f"{spacing[2]:.6f}"
            ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
            ds.SliceLocation = f"{float(np.dot(position, direction[:, 2])):.6f}"
            ds.InstanceNumber = (n_images - first - k) if spec.reverse_instances else first + k + 1
            ds.Rows, ds.Columns = size[1], size[0]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:.10g}", f"{lo:.10g}", "US"
            ds.WindowCenter, ds.WindowWidth = f"{(hi + lo) / 2:.6g}", f"{max(hi - lo, 1e-3):.6g}"
            ds.PixelData = stored[k].tobytes()
            phase.append(_with_meta(ds))
        out.append(phase)
    return out


def _with_meta(ds: pydicom.Dataset) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _save(ds: pydicom.Dataset, path: Path, compress: bool) -> Path:
    _with_meta(ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    if compress:
        with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        path.unlink()
        path = Path(f"{path}.gz")
    return path


def write_series(spec: SeriesSpec, number: int, study_dir: str | Path, study: dict) -> list[Path]:
    """Write one series below ``study_dir/spec.folder``; returns the files written."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    folder = Path(study_dir) / spec.folder
    phases = _slice_datasets(spec, number, study)
    written = []
    if spec.enhanced:
        ds = LegacyConvertedEnhancedMRImage([d for phase in phases for d in phase], spec.uid, number,
                                            generate_uid(), 1)
        return [_save(ds, folder / spec.file_name.format(n=1), spec.gzip)]
    for ds in (d for phase in phases for d in phase):
        written.append(_save(ds, folder / spec.file_name.format(n=int(ds.InstanceNumber)), spec.gzip))
    return written


def style_series(style: str, t1: sitk.Image | None, pre: sitk.Image, posts: list[sitk.Image]) -> list[SeriesSpec]:
    """The series of one study in a vendor ``style`` (see the module docstring), in series-number order;
    ``t1`` None leaves the T1 series out (a fat-suppressed-only study)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; one of {STYLES}")
    if t1 is None:
        return style_series(style, pre, pre, posts)[1:]
    times = [60.0 + 75.0 * i for i in range(len(posts) + 1)]  # pre at 60 s, then one phase every 75 s
    subs = [sitk.Subtract(p, pre) for p in posts]
    if style == "siemens":
        dyn = "t1_fl3d_tra_dynaVIEWS_spair"
        return [SeriesSpec("t1_fl3d_tra_nonFS", [t1], [0.0]),
                *[SeriesSpec(dyn, [v], [t], scan_options="FS") for v, t in zip([pre, *posts], times, strict=True)],
                *[SeriesSpec(f"{dyn}_SUB", [s], [t], image_type=("DERIVED", "PRIMARY", "M", "ND", "SUB"))
                  for s, t in zip(subs, times[1:], strict=True)],
                SeriesSpec(f"{dyn}_SUB_MIP_TRA", [subs[0]], [times[1]],
                           image_type=("DERIVED", "PRIMARY", "MIP_TRA", "SUB"))]
    if style == "ge":
        planes = [_with_direction(t1, d) for d in (AXIAL, SAGITTAL, CORONAL)]
        return [SeriesSpec("Ax T1 FSE", [t1], [0.0], scan_options="FAST_GEMS\\EDR_GEMS"),
                SeriesSpec("Ax Vibrant MultiPhase", [pre, *posts], times, scan_options="FAST_GEMS\\EDR_GEMS\\FS",
                           temporal_tags=True, one_acquisition_time=True),
                SeriesSpec("3-Plane Loc", planes, [-60.0] * 3)]
    if style == "philips":
        return [SeriesSpec("T1W_TSE_tra", [t1], [0.0], enhanced=True, file_name="IM_{n:04d}"),
                *[SeriesSpec("SUB_eTHRIVE", [s], [t], image_type=("DERIVED", "PRIMARY", "SUBTRACTION", "M"),
                             gzip=True, folder=f"DICOM/S{i:02d}", file_name="IM_{n:04d}.dcm")
                  for i, (s, t) in enumerate(zip(subs, times[1:], strict=True), start=1)]]
    names = ["ax t1", "ax dyn pre", *[f"ax dyn {ORDINALS[i]} pass" for i in range(len(posts))]]
    return [SeriesSpec(name, [v], [t], reverse_instances=True, file_name="1-{n:03d}.dcm")
            for name, v, t in zip(names, [t1, pre, *posts], [0.0, *times], strict=True)]


def write_study(study_dir: str | Path, style: str, t1: sitk.Image | None, pre: sitk.Image, posts: list[sitk.Image],
                subject: str = "PHANTOM", extra: list[SeriesSpec] = ()) -> dict[str, list[Path]]:
    """Write a whole study in ``style`` (plus ``extra`` series); returns {series description: files}."""
    return write_specs(study_dir, [*style_series(style, t1, pre, posts), *extra], subject, style == "duke")


def write_specs(study_dir: str | Path, specs: list[SeriesSpec], subject: str = "PHANTOM",
                duke_layout: bool = False) -> dict[str, list[Path]]:
    """Write series numbered 100, 200, ... in order into one study folder; returns {description: files}.

    Series without a ``folder`` go to ``S<number>``, or to Duke's folder names with ``duke_layout``.
    """
    study_dir = Path(study_dir)
    study = _study_tags(subject)
    written: dict[str, list[Path]] = {}
    for i, spec in enumerate(specs, start=1):
        number = 100 * i
        if duke_layout and not spec.folder:
            spec.folder = (f"01-01-1990-NA-MRI BREAST BILATERAL W  WO-{zlib.crc32(subject.encode()) % 90000}/"
                           f"{number}.000000-{spec.description}-{zlib.crc32(spec.uid.encode()) % 90000}")
        elif not spec.folder:
            spec.folder = f"S{number}"
        written.setdefault(spec.description, []).extend(write_series(spec, number, study_dir, study))
    return written
