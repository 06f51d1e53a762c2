"""``breastcmsl-train ingest``: a cohort of DICOM studies -> case folders + the Training manifest.

Layout: one study per sub-folder of ``--dicom-root``, the folder name is the subject id (for
Duke-Breast-Cancer-MRI from TCIA: ``Duke-Breast-Cancer-MRI/Breast_MRI_001/<study>/<series>/1-001.dcm``).
Each study is scanned and its roles assigned with the runtime's rules (:mod:`BreastCMSLLib.dicom.roles`,
``--patterns`` as in ``breastcmsl roles``; a ``roles.json`` inside a study folder overrides roles as
``breastcmsl analyze --roles`` does), then
written as a case folder ``<manifest folder>/cases/<subject>/`` ([t1] + pre/post_k or sub_k NRRDs; a study
without a non-fat-suppressed T1 gets none and its breast mask comes from the pre-contrast phase;
case.json with label, BI-RADS, lesion centre and the role table, ``roles.txt``). A failing study is
reported (``ingest_failures.csv`` and the summary) and the others go on. Finished case folders are
kept on a re-run (each is written to a temporary folder and renamed when complete).

Lesion boxes (``--boxes``), Duke's ``Annotation_Boxes`` sheet: columns ``Patient ID, Start Row, End Row,
Start Column, End Column, Start Slice, End Slice``. We read them as 1-based, inclusive pixel indices of
the dynamic (DCE) series: row = DICOM row (image j), column = DICOM column (image i), slice = position
in InstanceNumber order (Duke's file order ``1-001.dcm ...``), which in many Duke series runs against
the slice position. The centre of the box, mapped through the reference phase's geometry (first
post-contrast or first subtraction; Duke's DCE series share one grid), is the manifest's LPS centre, and the
box's voxels are the case's ``truth/lesion_mask.nrrd`` (:mod:`Training.duke`).

Duke's tables (:mod:`Training.duke`): ``--mapping`` (the file-name mapping) names each subject's pre- and
post-contrast series (a ``roles.json`` in the study folder still wins); ``--unit breast`` writes one manifest
row per breast (:mod:`Training.unitmanifest`), the box's breast positive, ``--clinical`` giving the tumour side
where the box reaches across the midline or no box is given.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.atomic import replace_folder, staging_folder
from BreastCMSLLib.cohort.manifest import Case, write_manifest
from BreastCMSLLib.dicom.roles import RolePatterns
from BreastCMSLLib.dicom.series import Phase
from BreastCMSLLib.dicom.study import load_overrides, load_patterns, load_study
from BreastCMSLLib.errors import InputError

from .duke import box_index, box_mask, breast_units, read_mapping, read_sides
from .unitmanifest import write_units

BOX_COLUMNS = ("Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice")
SUBJECT_COLUMNS = ("subject_id", "Patient ID")


@dataclass(frozen=True)
class StudyLabel:
    """A row of LABELS.csv: ``subject_id`` (or ``Patient ID``), ``label`` 0/1, optional split and birads."""

    subject_id: str
    label: int
    split: str = ""
    birads: int | None = None


def _rows(path: Path) -> list[dict]:
    """Rows of a CSV, or of the first sheet of an .xlsx (needs openpyxl), as dicts of stripped strings."""
    if not path.is_file():
        raise InputError(path, "no such file")
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        try:
            import openpyxl
        except ImportError:
            raise InputError(path, "reading .xlsx needs openpyxl (pip install openpyxl), or save it as CSV") from None
        sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0]
        values = [["" if v is None else str(v).strip() for v in row] for row in sheet.iter_rows(values_only=True)]
        header, body = values[0], values[1:]
    else:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
        header, body = [h.strip() for h in table[0]], [[v.strip() for v in r] for r in table[1:]]
    return [dict(zip(header, r, strict=False)) for r in body if r and r[0]]


def _subject(row: dict, path: Path) -> str:
    for key in SUBJECT_COLUMNS:
        if row.get(key):
            return row[key]
    raise InputError(path, f"a row has no {' or '.join(SUBJECT_COLUMNS)}: {row}")


def read_labels(path: str | Path) -> list[StudyLabel]:
    """LABELS.csv: ``subject_id,label[,split][,birads]`` (``Patient ID`` accepted for the subject)."""
    path = Path(path)
    labels = []
    for line, row in enumerate(_rows(path), start=2):
        label = row.get("label", "")
        if label not in ("0", "1"):
            raise InputError(f"{path}, line {line}", f"label must be 0 or 1, got {label!r}")
        birads = row.get("birads", "")
        labels.append(StudyLabel(_subject(row, path), int(label), row.get("split", ""),
                                 int(birads) if birads else None))
    if not labels:
        raise InputError(path, "no labelled subjects")
    return labels


def read_boxes(path: str | Path) -> dict[str, tuple[float, ...]]:
    """Duke ``Annotation_Boxes`` (CSV or .xlsx): subject -> (start row, end row, start col, end col,
    start slice, end slice), 1-based inclusive; the first box of a subject is kept."""
    path = Path(path)
    boxes: dict[str, tuple[float, ...]] = {}
    for row in _rows(path):
        missing = [c for c in BOX_COLUMNS if c not in row]
        if missing:
            raise InputError(path, f"missing columns {missing} (expected Patient ID, {', '.join(BOX_COLUMNS)})")
        try:
            boxes.setdefault(_subject(row, path), tuple(float(row[c]) for c in BOX_COLUMNS))
        except ValueError:
            continue  # a row without numbers (notes) carries no box
    return boxes


def box_centre_lps(box: tuple[float, ...], phase: Phase, image: sitk.Image) -> tuple[float, float, float]:
    """LPS centre (mm) of a 1-based inclusive (rows, columns, slices) box on ``phase`` read as ``image``.

    Slices count in InstanceNumber order; each is placed on the image's k axis by its ImagePositionPatient.
    """
    r0, r1, c0, c1, s0, s1 = box
    frames = sorted(phase.frames, key=lambda f: f.instance)
    k_of = [image.TransformPhysicalPointToContinuousIndex(f.position)[2] for f in frames]
    s = (s0 + s1) / 2.0 - 1.0
    if not 0 <= s <= len(frames) - 1:
        raise InputError(f"series {phase.label}", f"box slices {s0:g}-{s1:g} outside the {len(frames)} slices")
    lo = int(np.floor(s))
    hi = min(lo + 1, len(frames) - 1)
    k = k_of[lo] + (s - lo) * (k_of[hi] - k_of[lo])
    return tuple(image.TransformContinuousIndexToPhysicalPoint(((c0 + c1) / 2.0 - 1.0, (r0 + r1) / 2.0 - 1.0, k)))


def ingest_study(study_dir: Path, case_dir: Path, label: StudyLabel, box: tuple[float, ...] | None,
                 n_channels: int | None, patterns: RolePatterns, roles: dict | None = None) -> Case:
    """Convert one study into ``case_dir`` (written whole or not at all); returns its manifest row.

    The study is read as :func:`BreastCMSLLib.dicom.study.load_study` reads it for ``analyze --dicom``; each
    volume is stored under its role's name (t1 when the study has one, pre, post_k or sub_k).
    """
    roles_file = study_dir / "roles.json"
    overrides = load_overrides(roles_file) if roles_file.is_file() else None
    source = str(roles_file) if overrides else "the file-name mapping" if roles else None
    study = load_study(study_dir, overrides or roles, n_channels, patterns, source)
    centre = box_centre_lps(box, study.reference, study.inputs.reference) if box is not None else None
    with staging_folder(case_dir) as tmp:
        if box is not None:
            (tmp / "truth").mkdir()
            sitk.WriteImage(box_mask(*box_index(box, study.reference, study.inputs.reference), study.inputs.reference),
                            str(tmp / "truth" / "lesion_mask.nrrd"), useCompression=True)
        images = [image for image in (study.inputs.t1, *study.inputs.series) if image is not None]
        for entry, image in zip(study.assignment.entries, images, strict=True):
            sitk.WriteImage(image, str(tmp / f"{entry.role}.nrrd"), useCompression=True)
        info = {"label": label.label, "birads": label.birads, "center_lps": list(centre) if centre else None,
                "source": str(study_dir), "mask_source": study.inputs.mask_source, "roles": study.assignment.as_dict()}
        (tmp / "case.json").write_text(json.dumps(info, indent=2))
        (tmp / "roles.txt").write_text(study.assignment.table() + "\n")
        replace_folder(tmp, case_dir)
    return Case(label.subject_id, label.label, label.split, case_dir, label.birads, centre)


def _existing(case_dir: Path, label: StudyLabel) -> Case | None:
    """The manifest row of a case folder finished by an earlier run, or None."""
    try:
        info = json.loads((case_dir / "case.json").read_text())
    except (OSError, ValueError):
        return None
    centre = tuple(info["center_lps"]) if info.get("center_lps") else None
    return Case(label.subject_id, label.label, label.split, case_dir, label.birads, centre)


def _job(args) -> tuple[str, Case | None, str]:
    study_dir, case_dir, label, box, n_channels, patterns, roles = args
    try:
        case = _existing(case_dir, label) or ingest_study(study_dir, case_dir, label, box, n_channels, patterns, roles)
        return label.subject_id, case, ""
    except InputError as err:
        return label.subject_id, None, str(err)
    except (OSError, ValueError, RuntimeError) as err:  # unreadable pixel data, a full disk: this study only
        return label.subject_id, None, f"{study_dir}: {type(err).__name__}: {str(err)[:200]}"


def ingest(dicom_root: str | Path, labels_csv: str | Path, manifest: str | Path, workers: int = 1,
           boxes: str | Path | None = None, n_channels: int | None = None,
           patterns_file: str | Path | None = None, mapping: str | Path | None = None,
           clinical: str | Path | None = None, unit: str = "whole") -> dict:
    """Ingest every labelled study below ``dicom_root``; write the manifest; return a summary dict.

    Failures (a study folder missing, roles ambiguous, unreadable series) are listed in the summary and
    in ``ingest_failures.csv`` beside the manifest; they never stop the other studies.
    """
    dicom_root, manifest = Path(dicom_root), Path(manifest)
    if not dicom_root.is_dir():
        raise InputError(dicom_root, "no such DICOM root folder")
    labels = read_labels(labels_csv)
    box_table = read_boxes(boxes) if boxes else {}
    roles = read_mapping(mapping) if mapping else {}
    sides = read_sides(clinical) if clinical else {}
    patterns = load_patterns(patterns_file)
    cases_root = manifest.parent / "cases"
    cases_root.mkdir(parents=True, exist_ok=True)
    jobs, failures = [], {}
    for label in labels:
        study = dicom_root / label.subject_id
        if not study.is_dir():
            failures[label.subject_id] = f"{study}: no study folder for this subject"
            continue
        jobs.append((study, cases_root / label.subject_id, label, box_table.get(label.subject_id), n_channels,
                     patterns, roles.get(label.subject_id)))
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_job, jobs))
    else:
        results = [_job(j) for j in jobs]
    cases = [case for _, case, _ in results if case is not None]
    failures.update({sid: err for sid, case, err in results if case is None})
    if not cases:
        raise InputError(dicom_root, f"no study could be ingested ({len(failures)} failures: "
                         f"{'; '.join(list(failures.values())[:3])})")
    notes = {}
    if unit == "breast":
        units = []
        for case in cases:
            made, notes[case.subject_id] = breast_units(case, sides.get(case.subject_id), manifest.parent / "breasts")
            units.extend(made)
        write_units(manifest, units)
    else:
        write_manifest(manifest, cases)
    with open(manifest.parent / "ingest_failures.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", "error"])
        writer.writerows(sorted(failures.items()))
    return {"manifest": str(manifest), "cases": len(cases), "failures": failures,
            "without_centre": sorted(c.subject_id for c in cases if c.center_lps is None and box_table),
            "notes": {k: v for k, v in notes.items() if v}}


def add_parser(sub) -> None:
    """The ``ingest`` subcommand's arguments (for ``breastcmsl-train``'s subparsers)."""
    p = sub.add_parser("ingest", help="DICOM studies (one folder per subject) -> case folders + manifest")
    p.add_argument("--dicom-root", type=Path, required=True, help="folder with one study folder per subject")
    p.add_argument("--labels", type=Path, required=True, help="CSV subject_id,label[,split][,birads]")
    p.add_argument("--out", type=Path, required=True, help="manifest CSV to write (cases/ go beside it)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--boxes", type=Path, help="Duke Annotation_Boxes (.csv, or .xlsx with openpyxl)")
    p.add_argument("--channels", type=int, help="require this many post-contrast phases / subtractions")
    p.add_argument("--patterns", type=Path, help="PATTERNS.json replacing role-rule patterns (site wording)")
    p.add_argument("--mapping", type=Path, help="Duke's file-name mapping (.xlsx or .csv): each subject's phases")
    p.add_argument("--clinical", type=Path, help="Duke's Clinical_and_Other_Features (.xlsx or .csv): tumour side")
    p.add_argument("--unit", choices=("whole", "breast"), default="whole",
                   help="one manifest row per study (whole) or per breast (breast)")


def cmd_ingest(args) -> dict:
    return ingest(args.dicom_root, args.labels, args.out, args.workers, args.boxes, args.channels, args.patterns,
                  args.mapping, args.clinical, args.unit)
