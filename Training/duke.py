"""Duke-Breast-Cancer-MRI's published tables, and its lesion boxes as per-breast truth.

Tables (CSV or .xlsx, :mod:`Training.tables`):

- ``Clinical_and_Other_Features.xlsx``: a row of column groups above the names (and a row of notes below
  them) is skipped; ``Patient ID`` and the tumour side ``Tumor Location`` (``L``/``R``; also read from a column
  named ``Tumor Side`` or ``Laterality``), ``Bilateral Information`` (1: cancer in both breasts) where present.
- ``Breast-Cancer-MRI-filepath_filename-mapping.xlsx``: ``original_path_and_filename``
  (``DICOM_Images/Breast_MRI_001/<phase>/..._NNN.dcm``, phase ``pre``, ``post_1`` ...) and ``classic_path``
  (``.../Breast_MRI_001/<study>/<N>.000000-<description>-<id>/1-NNN.dcm``); a subject's phases name their
  series by the number ``N`` of the classic series folder, which becomes the study's roles (as a ROLES.json
  would name them), so a series whose description the role rules cannot read still gets its phase.

Boxes (``Annotation_Boxes``): 1-based inclusive rows (DICOM row = image j), columns (image i) and slices, the
slices numbered in the order of the series' files, i.e. InstanceNumber order, which in many Duke series runs
against the slice position: each slice is placed on the image's k axis by its own ImagePositionPatient, so a
series whose positions fall as instance numbers rise is flipped (:func:`box_index`). The box's voxels on the
reference phase's grid are the study's lesion truth (``truth/lesion_mask.nrrd``: a box, not a contour).

Per-breast truth: the breast that holds the box (its centre against the midline from the breast mask,
:mod:`Training.breasts`) is positive. Where the box reaches across the midline (a lesion near the sternum), or
the box's side and the clinical table disagree, the clinical side decides and the report says so; cancer in
both breasts makes both positive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.cohort.manifest import Case
from BreastCMSLLib.dicom.series import Phase
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.volumes import find_case_files, read_volume

from .breasts import Midline, find_midline, side_of
from .tables import read_table
from .unitfolder import write_unit_folder
from .unitmanifest import Unit

SIDE_COLUMNS = ("Tumor Location", "Tumor Side", "Laterality")
BILATERAL_COLUMNS = ("Bilateral Information", "Bilateral")
PHASE_FOLDER = re.compile(r"^(pre|post_?(\d+))$", re.IGNORECASE)
SERIES_FOLDER = re.compile(r"^(\d+)(\.0+)?-")


def read_sides(path: str | Path) -> dict[str, str]:
    """Tumour side per subject: ``left``, ``right`` or ``both`` (subjects without a side are left out)."""
    table = read_table(path, "Patient ID")
    pid, side = table.column("Patient ID"), table.column(*SIDE_COLUMNS)
    both = table.column(*BILATERAL_COLUMNS, required=False)
    sides = {}
    for row in table.rows:
        value = row.get(side, "").strip().upper()[:1]
        if both and row.get(both, "").strip() in ("1", "1.0"):
            sides[row[pid]] = "both"
        elif value in ("L", "R"):
            sides[row[pid]] = "left" if value == "L" else "right"
    return sides


def read_mapping(path: str | Path) -> dict[str, dict]:
    """Per subject, ROLES.json-style roles from the file-name mapping: {"pre": N, "post": [N1, N2, ...]}
    (series numbers of the classic series folders)."""
    table = read_table(path, "original_path_and_filename")
    original, classic = table.column("original_path_and_filename"), table.column("classic_path")
    phases: dict[str, dict[str, int]] = {}
    for row in table.rows:
        parts = Path(row[original].replace("\\", "/")).parts
        folder = Path(row.get(classic, "").replace("\\", "/")).parent.name
        number = SERIES_FOLDER.match(folder)
        phase = next((p for p in parts if PHASE_FOLDER.match(p)), None)
        subject = next((p for p in parts if p.lower().startswith("breast_mri_")), None)
        if number is None or phase is None or subject is None:
            continue
        m = PHASE_FOLDER.match(phase)
        name = "pre" if m.group(2) is None else f"post_{int(m.group(2))}"
        phases.setdefault(subject, {}).setdefault(name, int(number.group(1)))
    roles = {}
    for subject, named in phases.items():
        posts = sorted((int(p.split("_")[1]), n) for p, n in named.items() if p.startswith("post_"))
        if "pre" in named and posts:
            roles[subject] = {"pre": named["pre"], "post": [n for _, n in posts]}
    return roles


def box_index(box: tuple[float, ...], phase: Phase, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The (i, j, k) index range, first and last voxel (0-based, inclusive), of a Duke box on ``image``
    (``phase`` read as ``image``): slice s is the s-th file in InstanceNumber order, placed at the k of its
    ImagePositionPatient."""
    r0, r1, c0, c1, s0, s1 = (round(v) for v in box)
    frames = sorted(phase.frames, key=lambda f: f.instance)
    if min(s0, s1) < 1 or max(s0, s1) > len(frames):
        raise InputError(f"series {phase.label}", f"box slices {s0}-{s1} outside the {len(frames)} slices")
    ks = [round(image.TransformPhysicalPointToContinuousIndex(frames[s - 1].position)[2]) for s in (s0, s1)]
    first = np.array([c0 - 1, r0 - 1, min(ks)])
    last = np.array([c1 - 1, r1 - 1, max(ks)])
    size = np.array(image.GetSize())
    if np.any(first < 0) or np.any(last >= size) or np.any(first > last):
        raise InputError(f"series {phase.label}", f"box rows {r0}-{r1}, columns {c0}-{c1} outside the image "
                         f"({size[1]} rows, {size[0]} columns)")
    return first, last


def box_mask(first: np.ndarray, last: np.ndarray, image: sitk.Image) -> sitk.Image:
    """uint8 mask on ``image``'s grid, 1 inside the index box [first, last]."""
    array = np.zeros(image.GetSize()[::-1], np.uint8)  # (k, j, i)
    array[first[2]:last[2] + 1, first[1]:last[1] + 1, first[0]:last[0] + 1] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


@dataclass(frozen=True)
class BoxSide:
    """The breasts a box makes positive, and why (``box``, ``clinical`` or ``both``), with a note if any."""

    positive: tuple[str, ...]
    reason: str
    note: str = ""


def box_side(mask: sitk.Image, midline: Midline, clinical: str | None) -> BoxSide:
    """Which breast a box mask lies in (see the module)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    i0, j0, k0, ni, nj, nk = stats.GetBoundingBox(1)
    xs = [mask.TransformContinuousIndexToPhysicalPoint((i, j0, k0))[0] for i in (i0 - 0.5, i0 + ni - 0.5)]
    by_box = side_of(mask.TransformContinuousIndexToPhysicalPoint(
        (i0 + (ni - 1) / 2, j0 + (nj - 1) / 2, k0 + (nk - 1) / 2))[0], midline)
    if clinical == "both":
        return BoxSide(("left", "right"), "both")
    across = min(xs) < midline.x_mm < max(xs)
    if clinical in ("left", "right") and (across or clinical != by_box):
        why = "the box reaches across the midline" if across else f"the box lies in the {by_box} breast"
        return BoxSide((clinical,), "clinical", f"{why}; the clinical table's side ({clinical}) is used")
    if across:
        return BoxSide((by_box,), "box", "the box reaches across the midline and the clinical table gives no side")
    return BoxSide((by_box,), "box")


def breast_units(case: Case, clinical: str | None, cases_root: Path) -> tuple[list[Unit], str]:
    """The two breasts of an ingested study folder as units (linked to its volumes; the positive breast's folder
    links its box as ``truth/lesion_mask``), and a note for the report."""
    files = find_case_files(case.case_dir)
    truth = sorted(Path(case.case_dir).glob("truth/lesion_mask.*"))
    midline = find_midline(read_volume(files.series[0]))
    side = box_side(sitk.ReadImage(str(truth[0]), sitk.sitkUInt8), midline, clinical) if truth else None
    if side is None:
        positive = {"left", "right"} if clinical == "both" else ({clinical} if clinical else set())
        reason, note = "clinical", "no box: the clinical table's side" if clinical else "no box and no side"
    else:
        positive, reason, note = set(side.positive), side.reason, side.note
    names = {"t1": files.t1} if files.t1 else {}
    names.update({"pre": files.series[0], **{f"post_{k}": p for k, p in enumerate(files.series[1:], start=1)}})
    units = []
    for breast in ("left", "right"):
        label = int(case.label == 1 and breast in positive)
        sid = f"{case.subject_id}_{breast}"
        centre = case.center_lps if label and truth else None
        info = {"study": case.subject_id, "breast": breast, "label": label, "center_lps": centre,
                "midline_lps_x": midline.x_mm, "midline_source": midline.source, "side_from": reason,
                "source": str(case.case_dir)}
        write_unit_folder(cases_root / sid, names, truth[0] if label and truth else None, info)
        units.append(Unit(Case(sid, label, case.split, cases_root / sid, case.birads, centre), case.subject_id,
                          breast, "DUKE", len(files.series) - 1, (), "box" if label and truth else "",
                          midline.x_mm, midline.source))
    return units, note
