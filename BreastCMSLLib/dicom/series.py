"""DICOM studies: scan a folder into series, split dynamic series into phases, read phases as volumes.

The header scan uses pydicom (``stop_before_pixels``); gzip-compressed files (``*.dcm.gz`` or any file
that starts with the gzip magic) are read transparently. A *phase* is one 3D volume: a whole classic
series, one temporal position of a multi-phase series, or one enhanced multi-frame file. A series with
N images at every slice position is split by position (:func:`_split_phases`): the k-th image at each
position, in the order of the first of :data:`SPLIT_KEYS` present on all images, is phase k. DICOM
objects that are no MR image volume (SEG, SR, PR, derived maps, localizers) are kept as series with
the reason in :attr:`Series.excluded` and no phases (:func:`exclusion`). Volumes are
read with highdicom (``get_volume_from_series``; for multi-frame files its spatial sorting and
``Volume.from_attributes``), which sorts the slices along the slice normal and builds the LPS geometry;
we only convert its ``Volume`` to a SimpleITK image.
Every position and direction here is LPS millimetres, as DICOM stores them.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.volumes import check_image

# keys that order the images at one slice position into phases, first present on all of them wins;
# never AcquisitionNumber (GE numbers its phases 1, 2, 2: not a phase index)
SPLIT_KEYS = ("temporal_position", "trigger_time", "acquisition_time", "content_time", "instance")
GZIP_MAGIC = b"\x1f\x8b"
MR_IMAGE_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",
                                  "1.2.840.10008.5.1.4.1.1.4.4"})  # MR, Enhanced MR, Legacy Converted Enh. MR
SUBTRACTION_IMAGE_TYPES = frozenset({"SUB", "SUBTRACT", "SUBTRACTION"})
NON_VOLUME_IMAGE_TYPES = ("MIP", "PROJECTION", "LOCALIZER", "MPR", "REFORMATTED")  # ImageType value prefixes


@dataclass(frozen=True)
class Frame:
    """One 2D image: a single-frame file, or frame ``frame`` (1-based) of a multi-frame file."""

    path: Path
    frame: int | None
    position: tuple[float, float, float]  # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...]  # ImageOrientationPatient (row then column direction cosines)
    instance: int
    temporal_position: int | None = None  # TemporalPositionIdentifier / TemporalPositionIndex
    trigger_time: float | None = None  # ms
    acquisition_time: float | None = None  # s since midnight
    content_time: float | None = None  # s since midnight


@dataclass
class Phase:
    """One 3D volume of a series, with its frames; ``index`` is 1-based within the series (time order)."""

    series: Series
    index: int
    frames: list[Frame]
    time_s: float | None  # acquisition time (s since midnight), trigger time added within a series

    @property
    def label(self) -> str:
        """``"7"`` for a one-phase series, ``"7:2"`` for phase 2 of series 7."""
        n = self.series.number
        return str(n) if len(self.series.phases) == 1 else f"{n}:{self.index}"

    @property
    def normal(self) -> np.ndarray:
        return _normal(self.frames[0].orientation)

    def describe(self) -> dict:
        """JSON-ready identity of the phase (series UID, number, description, phase index, time)."""
        return {"series_uid": self.series.uid, "series_number": self.series.number,
                "description": self.series.description, "phase": self.index,
                "phases_in_series": len(self.series.phases), "time_s": self.time_s,
                "orientation": self.series.plane}


@dataclass
class Series:
    """Header facts of one DICOM series that matter for role assignment."""

    uid: str
    number: int
    description: str
    image_type: tuple[str, ...]
    scan_options: str
    number_of_temporal_positions: int | None
    phases: list[Phase] = field(default_factory=list)
    split_by: str | None = None  # the tag that ordered the images at each position into phases, None for one
    problem: str | None = None  # why the series holds no usable volume (then ``phases`` is empty)
    excluded: str | None = None  # why it never takes a role (derived map, SEG/SR/PR, localizer); no phases

    @property
    def plane(self) -> str:
        """``axial``, ``coronal`` or ``sagittal``: the patient axis closest to the slice normal
        (``unknown`` for a series without a usable volume)."""
        if not self.phases:
            return "unknown"
        normal = _normal(self.phases[0].frames[0].orientation)
        return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]

    @property
    def n_images(self) -> int:
        return sum(len(p.frames) for p in self.phases)


def _normal(orientation) -> np.ndarray:
    o = np.asarray(orientation, dtype=float)
    return np.cross(o[:3], o[3:])


def _seconds(value) -> float | None:
    """DICOM TM (HHMMSS.frac, a DT's time part may carry a +/-HHMM offset) to seconds since midnight;
    None when empty or not a time."""
    text = str(value or "").strip().split("+")[0].split("-")[0]
    try:
        return 3600 * int(text[0:2]) + 60 * int(text[2:4] or 0) + float(text[4:] or 0) if text else None
    except ValueError:
        return None


def _strings(value) -> tuple[str, ...]:
    """A DICOM value that may be single or multi-valued as a tuple of strings."""
    if value is None or value == "":
        return ()
    return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)


def _float(value) -> float | None:
    return None if value in (None, "") else float(value)


def read_dataset(path: str | Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Read one DICOM file, gzip-compressed or not; raises ``InvalidDicomError``/``OSError`` if not DICOM."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == GZIP_MAGIC:
        with gzip.open(path, "rb") as fh:
            return pydicom.dcmread(io.BytesIO(fh.read()), stop_before_pixels=stop_before_pixels)
    return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)


def _frames_of(ds: pydicom.Dataset, path: Path) -> list[Frame]:
    """The frames of one file with their positions and timing tags."""
    acq, content = _seconds(ds.get("AcquisitionTime")), _seconds(ds.get("ContentTime"))
    instance = int(ds.get("InstanceNumber") or 0)
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else {}
        frames = []
        for n, group in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
            def item(name, group=group):
                seq = group.get(name) or shared.get(name)
                return seq[0] if seq else pydicom.Dataset()
            content_seq = item("FrameContentSequence")
            timing = item("MRTimingAndRelatedParametersSequence")
            frames.append(Frame(
                path, n, tuple(map(float, item("PlanePositionSequence").ImagePositionPatient)),
                tuple(map(float, item("PlaneOrientationSequence").ImageOrientationPatient)), instance,
                content_seq.get("TemporalPositionIndex"), _float(timing.get("TriggerTime")),
                _seconds(content_seq.get("FrameAcquisitionDateTime", "")[8:]) or acq, content))
        return frames
    return [Frame(path, None, tuple(map(float, ds.ImagePositionPatient)),
                  tuple(map(float, ds.ImageOrientationPatient)), instance,
                  ds.get("TemporalPositionIdentifier"), _float(ds.get("TriggerTime")), acq, content)]


def _clock_time(frame: Frame) -> float | None:
    """AcquisitionTime, else ContentTime (s since midnight, fractions kept)."""
    return frame.acquisition_time if frame.acquisition_time is not None else frame.content_time


def _split_phases(series: Series, frames: list[Frame]) -> list[list[Frame]]:
    """Split a series' frames into phases by slice position: with N images at every position, the images
    at each position are ordered by the first of :data:`SPLIT_KEYS` that is present on all frames and
    distinct at every position, and the k-th image of every position is phase k.

    Raises InputError when positions hold different numbers of images, when no key orders them, or when
    the phases' clock-time ranges overlap (then the split cannot be the acquisition order).
    """
    normal = _normal(frames[0].orientation)
    by_position: dict[float, list[Frame]] = defaultdict(list)
    for f in frames:
        by_position[round(float(np.dot(normal, f.position)), 3)].append(f)
    counts = {len(v) for v in by_position.values()}
    if counts == {1}:
        return [frames]
    if len(counts) > 1:
        raise InputError(series.description or series.uid, f"{sorted(counts)} images at different slice "
                         "positions; it cannot be split into phases")
    n = counts.pop()
    keys = {"acquisition_time": _clock_time}  # AcquisitionTime or, where absent on all, ContentTime
    for key in SPLIT_KEYS:
        value = keys.get(key, lambda f, key=key: getattr(f, key))
        if key == "acquisition_time" and any(f.acquisition_time is None for f in frames):
            continue  # ContentTime (next key) then
        if any(value(f) is None for f in frames):
            continue
        if any(len({value(f) for f in group}) != n for group in by_position.values()):
            continue
        series.split_by = key
        ordered = [sorted(group, key=value) for group in by_position.values()]
        phases = [[group[k] for group in ordered] for k in range(n)]
        _check_time_ranges(series, phases)
        return phases
    raise InputError(series.description or series.uid, f"{n} images per slice position but none of "
                     f"{', '.join(SPLIT_KEYS)} orders them into phases")


def _check_time_ranges(series: Series, phases: list[list[Frame]]) -> None:
    """Phase k must end (clock time) no later than phase k + 1 starts; frames without a time are skipped."""
    ranges = []
    for frames in phases:
        times = [t for t in map(_clock_time, frames) if t is not None]
        ranges.append((min(times), max(times)) if times else None)
    for k, (a, b) in enumerate(itertools.pairwise(ranges), start=1):
        if a is not None and b is not None and a[1] > b[0]:
            raise InputError(series.description or series.uid, f"split by {series.split_by} into {len(phases)} "
                             f"phases whose acquisition times overlap (phase {k} ends at {a[1]:.2f} s, phase "
                             f"{k + 1} starts at {b[0]:.2f} s); not a time series")


def _phase_time(frames: list[Frame], series_start: float | None) -> float | None:
    """A phase's time: its earliest AcquisitionTime, else ContentTime, else the series' start."""
    times = [t for t in map(_clock_time, frames) if t is not None]
    return min(times) if times else series_start


def _dicom_files(folder: Path):
    for root, _dirs, names in os.walk(folder):
        for name in sorted(names):
            yield Path(root) / name


def scan_study(folder: str | Path) -> list[Series]:
    """Scan ``folder`` recursively for DICOM series; returns them sorted by series number.

    Files that are not DICOM are skipped; DICOM objects that are no MR image volume (SEG, SR, PR, derived
    maps, localizers) are listed with :attr:`Series.excluded`. Raises InputError when the folder holds no
    DICOM image series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such study folder")
    series = scan_files(_dicom_files(folder))
    if not any(s.phases or s.problem for s in series):
        raise InputError(folder, "no DICOM image series found (searched recursively, .gz included)")
    return series


def scan_files(paths) -> list[Series]:
    """Group DICOM files into series (sorted by series number); files that are not DICOM are skipped.

    The Slicer module passes the files behind its loaded volumes (``DICOM.instanceUIDs``) here to
    pre-fill its selectors with the same role rules as the command line.
    """
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in map(Path, paths):
        try:
            ds = read_dataset(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if "SeriesInstanceUID" in ds:
            headers[str(ds.SeriesInstanceUID)].append((path, ds))
    return sorted((_series_from(uid, files) for uid, files in headers.items()), key=lambda s: (s.number, s.uid))


def exclusion(ds: pydicom.Dataset, image_type: tuple[str, ...]) -> str | None:
    """Why a DICOM object never takes a role (header facts only), or None for an MR image volume:
    a non-MR-image SOP class (SEG, SR, PR, parametric map, secondary capture ...), no pixels or no
    image position, ImageType DERIVED\\SECONDARY (a derived map; scanner subtractions excepted), or a
    localizer, projection or reformat by ImageType."""
    sop = str(ds.get("SOPClassUID") or "")
    if sop and sop not in MR_IMAGE_SOP_CLASSES:
        return f"SOP class {pydicom.uid.UID(sop).name} (not an MR image)"
    modality = str(ds.get("Modality") or "MR")
    if modality != "MR":
        return f"modality {modality} (not an MR image)"
    if "Rows" not in ds:
        return "no image pixels"
    if "PerFrameFunctionalGroupsSequence" not in ds and not (
            "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds):
        return "no image position or orientation"
    if image_type[:2] == ("DERIVED", "SECONDARY") and not SUBTRACTION_IMAGE_TYPES & set(image_type):
        return "ImageType DERIVED\\SECONDARY (a derived map)"
    flagged = [v for v in image_type if v.startswith(NON_VOLUME_IMAGE_TYPES)]
    if flagged:
        return f"ImageType {flagged[0]} (a localizer, projection or reformat)"
    return None


def _series_from(uid: str, files: list[tuple[Path, pydicom.Dataset]]) -> Series:
    ds = files[0][1]
    image_type = tuple(v.upper() for v in _strings(ds.get("ImageType")))
    series = Series(
        uid=uid, number=int(ds.get("SeriesNumber") or 0), description=str(ds.get("SeriesDescription") or ""),
        image_type=image_type, scan_options="\\".join(_strings(ds.get("ScanOptions"))),
        number_of_temporal_positions=ds.get("NumberOfTemporalPositions"), excluded=exclusion(ds, image_type))
    if series.excluded:
        return series
    frames = [f for path, d in files for f in _frames_of(d, path)]
    orientations = {tuple(np.round(f.orientation, 3)) for f in frames}
    if len(orientations) > 1:  # a 3-plane localizer, say: kept, never a volume
        series.problem = f"mixes {len(orientations)} slice orientations"
        return series
    try:
        groups = _split_phases(series, frames)
    except InputError as err:
        series.problem = err.problem
        return series
    start = _seconds(ds.get("SeriesTime"))
    times = [_phase_time(g, start) for g in groups]
    if len(groups) > 1 and None not in times and len(set(times)) == 1:
        # phases acquired "at once" by the header (common for GE multi-phase): order by trigger time
        triggers = [min((f.trigger_time or 0.0) for f in g) / 1000.0 for g in groups]
        times = [t + d for t, d in zip(times, triggers, strict=True)]
    series.phases = [Phase(series, i, g, t) for i, (g, t) in enumerate(zip(groups, times, strict=True), start=1)]
    return series


def volume_to_image(volume) -> sitk.Image:
    """A highdicom ``Volume`` (array (slice, row, column), affine to LPS) as a SimpleITK image whose
    (i, j, k) are DICOM (column, row, slice), k running along row x column direction cosines.

    Hand-written because ``Volume.to_simpleitk`` keeps the slice axis first (i = slice), which would
    put our maps on a permuted grid rather than the series' own voxel order.
    """
    array = np.asarray(volume.array)
    affine = np.asarray(volume.affine, dtype=float)
    slice_step, row_step, col_step = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    origin = affine[:3, 3]
    if float(np.dot(slice_step, np.cross(col_step, row_step))) < 0:
        origin = origin + (array.shape[0] - 1) * slice_step
        slice_step, array = -slice_step, array[::-1]
    steps = np.stack([col_step, row_step, slice_step], axis=1)
    spacing = np.linalg.norm(steps, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection((steps / spacing).flatten().tolist())
    return image


def _pixel_spacing(ds: pydicom.Dataset, frame: int) -> tuple[float, float]:
    """PixelSpacing (row spacing, column spacing; mm) of a frame of an enhanced multi-frame image."""
    groups = [ds.PerFrameFunctionalGroupsSequence[frame - 1], *ds.get("SharedFunctionalGroupsSequence", [])]
    for group in groups:
        if "PixelMeasuresSequence" in group and "PixelSpacing" in group.PixelMeasuresSequence[0]:
            return tuple(map(float, group.PixelMeasuresSequence[0].PixelSpacing))
    raise ValueError("no PixelSpacing in the functional groups")


def _multiframe_volume(phase: Phase):
    """A highdicom ``Volume`` of a phase made of frames of multi-frame files (a whole file, or the frames of
    one temporal position), placed by highdicom's spatial sorting."""
    import highdicom as hd

    datasets = {p: read_dataset(p) for p in sorted({f.path for f in phase.frames})}
    images = {p: hd.Image.from_dataset(ds) for p, ds in datasets.items()}
    orientation = phase.frames[0].orientation
    spacing, index = hd.spatial.get_volume_positions([f.position for f in phase.frames], orientation)
    if spacing is None:
        raise ValueError("the frames are not regularly spaced slices of one volume")
    ordered = [phase.frames[i] for i in np.argsort(index)]
    array = np.stack([images[f.path].get_frame(f.frame, dtype=np.float32) for f in ordered])
    first = ordered[0]
    return hd.Volume.from_attributes(
        array=array, image_position=first.position, image_orientation=orientation,
        pixel_spacing=_pixel_spacing(datasets[first.path], first.frame), spacing_between_slices=spacing,
        coordinate_system="PATIENT")


def read_phase(phase: Phase) -> sitk.Image:
    """Read one phase as a float32 SimpleITK image in LPS (modality rescale applied)."""
    import highdicom as hd

    source = f"series {phase.series.number} '{phase.series.description}'"
    try:
        if phase.frames[0].frame is not None:
            volume = _multiframe_volume(phase)
        else:
            volume = hd.get_volume_from_series([read_dataset(p) for p in sorted({f.path for f in phase.frames})],
                                               dtype=np.float32)
        image = volume_to_image(volume)
    except (ValueError, RuntimeError, AttributeError) as err:
        raise InputError(source, f"cannot be read as one regular 3D volume ({str(err)[:160]})") from None
    return check_image(image, source)


def source_datasets(phase: Phase) -> list[pydicom.Dataset]:
    """The full datasets (pixels included) of a phase's files, e.g. as source images of a DICOM SEG."""
    return [read_dataset(p) for p in sorted({f.path for f in phase.frames})]
