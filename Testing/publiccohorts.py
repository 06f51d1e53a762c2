"""Small replicas of the public cohorts' layouts, made from phantoms, with the traps of the real downloads
(``/work/shared/notes/public_cohort_layouts.md``; Training/mamamia.py and Training/duke.py read them).

MAMA-MIA (:func:`write_mama_mia`): ``images/<ID>/<id>_000k.nii.gz`` (folders upper-case, files lower-case),
``segmentations/expert/<id>.nii.gz``, ``patient_info_files/<id>.json`` with ``breast_coordinates`` in numpy's
(z, y, x) order, ``clinical_and_imaging_info.xlsx`` (sheet ``dataset_info``) and ``train_test_splits.csv``
(columns padded). Studies (:data:`MAMA_MIA`): 2 to 5 post-contrast phases, a mask on a finer grid than the
images, a study without a mask, a sagittal single-breast NACT study, and a broken one.

Duke (:func:`write_duke_tables`): ``Annotation_Boxes.xlsx``, ``Breast-Cancer-MRI-filepath_filename-mapping.xlsx``
and ``Clinical_and_Other_Features.xlsx`` (a row of column groups above the names, a row of descriptions
below them) for DICOM studies written by :mod:`Testing.dicomsynth` in Duke's style.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 40, 24)
SPACING = (6.0, 5.0, 5.0)  # mm: 288 x 200 x 120 mm, both breasts in view
FINE = (96, 80, 48)  # the same field of view at half the spacing: the mask "on another grid"


@dataclass(frozen=True)
class MamaMiaStudy:
    """One replica study: phantom seed, post-contrast phases, how its truth is stored."""

    pid: str
    seed: int
    posts: int
    mask: str  # "same" grid, "fine" grid, or "none"
    single: bool = False  # a sagittal single-breast acquisition (the phantom's right breast)
    broken: bool = False  # its JSON has no breast_coordinates and it has no mask


MAMA_MIA = (MamaMiaStudy("DUKE_001", 2, 4, "same"),  # right breast
            MamaMiaStudy("ISPY1_1001", 6, 2, "fine"),  # right breast, mask on a finer grid
            MamaMiaStudy("ISPY2_100899", 1, 5, "none"),  # left breast, labelled from breast_coordinates
            MamaMiaStudy("NACT_01", 8, 3, "same", single=True),
            MamaMiaStudy("DUKE_002", 3, 3, "none", broken=True))
OFFICIAL_SPLIT = {"DUKE_001": "train", "ISPY1_1001": "train", "ISPY2_100899": "test", "NACT_01": "test",
                  "DUKE_002": "train"}
TIMES = [0, 584, 714, 846, 977, 1108]


def phantom(seed: int, shape=SHAPE, spacing=None):
    """A malignant phantom on ``shape``; ``spacing`` None keeps :data:`SHAPE` x :data:`SPACING`'s field of view."""
    spacing = spacing or tuple(s * SHAPE[0] / shape[0] for s in SPACING)
    return make_case(seed, PhantomConfig(shape=shape, spacing=spacing, label=1))


def right_half_sagittal(image: sitk.Image) -> sitk.Image:
    """The right breast's half of an axial volume (i below the centre), stored sagittally (i -> P, j -> I, k -> L)."""
    half = image[: image.GetSize()[0] // 2, :, :]
    return sitk.DICOMOrient(half, "PIL")


def write_xlsx(path: Path, sheets: dict[str, list[list]]) -> None:
    """A workbook with one sheet per entry (rows of cells)."""
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        ws = book.create_sheet(name)
        for row in rows:
            ws.append(row)
    book.save(path)


def lesion_box_zyx(lesion: sitk.Image) -> dict:
    """``breast_coordinates`` of a lesion mask as MAMA-MIA stores them: numpy (axis 0, 1, 2) named (x, y, z)."""
    a0, a1, a2 = np.nonzero(sitk.GetArrayViewFromImage(lesion))
    return {"x_min": int(a0.min()), "x_max": int(a0.max()), "y_min": int(a1.min()), "y_max": int(a1.max()),
            "z_min": int(a2.min()), "z_max": int(a2.max())}


def write_mama_mia(root: Path, shape=SHAPE, spacing=SPACING, fine_shape=FINE) -> dict[str, dict]:
    """The MAMA-MIA replica below ``root`` (images on ``shape`` x ``spacing``, the "fine" mask on ``fine_shape``
    over the same field of view); returns each study's truth (phantom ``side``, ``center_lps``)."""
    (root / "images").mkdir(parents=True)
    (root / "segmentations" / "expert").mkdir(parents=True)
    (root / "patient_info_files").mkdir()
    truth, rows = {}, []
    for s in MAMA_MIA:
        case = phantom(s.seed, shape, spacing)
        volumes = [case.images["pre"], *(case.images[f"post_{k}"] for k in range(1, s.posts + 1))]
        lesion = case.lesion_mask
        if s.single:
            volumes = [right_half_sagittal(v) for v in volumes]
            lesion = right_half_sagittal(lesion)
        folder = root / "images" / s.pid
        folder.mkdir()
        for k, v in enumerate(volumes):
            sitk.WriteImage(v, str(folder / f"{s.pid.lower()}_{k:04d}.nii.gz"), useCompression=True)
        if s.mask != "none":
            fine = tuple(a * n / m for a, n, m in zip(spacing, shape, fine_shape, strict=True))
            mask = phantom(s.seed, fine_shape, fine).lesion_mask if s.mask == "fine" else lesion
            sitk.WriteImage(mask, str(root / "segmentations" / "expert" / f"{s.pid.lower()}.nii.gz"),
                            useCompression=True)
        info = {"imaging_data": {"bilateral": not s.single, "dataset": s.pid.split("_")[0]}}
        if not s.broken:
            info["primary_lesion"] = {"breast_coordinates": lesion_box_zyx(lesion)}
        (root / "patient_info_files" / f"{s.pid.lower()}.json").write_text(json.dumps(info))
        truth[s.pid] = {"side": case.truth["side"], "center_lps": case.truth["center_lps"], "posts": s.posts}
        rows.append([s.pid, s.pid.split("_")[0], 0, 0, 1, "sagittal" if s.single else "axial", int(not s.single),
                     s.posts + 1, str(TIMES[:s.posts + 1])])
    header = ["patient_id", "dataset", "bilateral_breast_cancer", "multifocal_cancer", "pcr", "view", "bilateral_mri",
              "num_phases", "acquisition_times"]
    write_xlsx(root / "clinical_and_imaging_info.xlsx", {"dataset_info": [header, *rows]})
    train = [p for p, s in OFFICIAL_SPLIT.items() if s == "train"]
    test = [p for p, s in OFFICIAL_SPLIT.items() if s == "test"]
    with open(root / "train_test_splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["train_split", "test_split"])
        for i in range(max(len(train), len(test))):
            w.writerow([train[i] if i < len(train) else "", test[i] if i < len(test) else ""])
    return truth


DUKE_SHAPE = (48, 40, 24)


@dataclass(frozen=True)
class DukeStudy:
    """One Duke replica study: seed, and the box to publish (``None``: the lesion's own box)."""

    subject: str
    seed: int
    side: str  # the clinical table's tumour side, "L" or "R"
    box: tuple[int, ...] | None = None


def duke_box(lesion: sitk.Image, reversed_instances: bool = True) -> list[int]:
    """Duke's 1-based inclusive (rows, columns, slices) box of a lesion mask; slices count in instance
    order, which runs against the slice position where ``reversed_instances`` (dicomsynth's Duke style)."""
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(lesion))
    n = lesion.GetSize()[2]
    slices = [n - k.max(), n - k.min()] if reversed_instances else [k.min() + 1, k.max() + 1]
    return [int(v) for v in (j.min() + 1, j.max() + 1, i.min() + 1, i.max() + 1, *slices)]


def duke_phantom(seed: int):
    return make_case(seed, dataclasses.replace(PhantomConfig(shape=DUKE_SHAPE, spacing=SPACING), label=1))


def write_duke_tables(folder: Path, boxes: dict[str, list[int]], sides: dict[str, str],
                      mapping: list[tuple[str, str]]) -> None:
    """Duke's three published tables: boxes, clinical features (tumour side) and the file-name mapping."""
    folder.mkdir(parents=True, exist_ok=True)
    write_xlsx(folder / "Annotation_Boxes.xlsx", {"Sheet1": [
        ["Patient ID", "Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice"],
        *[[s, *b] for s, b in boxes.items()]]})
    groups = ["Patient Information", "", "", "Tumor Characteristics", ""]
    names = ["Patient ID", "Days to MRI (From the Date of Diagnosis)", "Manufacturer", "Tumor Location",
             "Bilateral Information"]
    notes = ["", "days", "0 = GE, 1 = Siemens", "L = left, R = right", "1 = bilateral"]
    write_xlsx(folder / "Clinical_and_Other_Features.xlsx", {"data": [
        groups, names, notes, *[[s, 0, 0, side, 0] for s, side in sides.items()]]})
    write_xlsx(folder / "Breast-Cancer-MRI-filepath_filename-mapping.xlsx", {"Sheet1": [
        ["original_path_and_filename", "classic_path"], *[list(r) for r in mapping]]})
