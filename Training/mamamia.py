"""``breastcmsl-train ingest-mama-mia``: the MAMA-MIA cohort -> one manifest row per breast.

Layout read below ``--root`` (names matched without regard to case: folders are published upper-case,
files lower-case)::

    images/<ID>/<id>_0000.nii.gz ... _000N      phase k = 0 pre-contrast, k >= 1 post-contrast
    segmentations/expert/<id>.nii.gz            expert tumour mask (1 = tumour), on its own grid
    patient_info_files/<id>.json                primary_lesion.breast_coordinates {x,y,z}_{min,max}
    clinical_and_imaging_info.xlsx              sheet dataset_info: patient_id, dataset, view, bilateral_mri,
                                                bilateral_breast_cancer, acquisition_times ("[0, 584, ...]" s)
    train_test_splits.csv                       columns train_split, test_split (the shorter padded empty)

Units. A bilateral axial study gives two units, the left and the right breast, split at the midline found
from the breast mask of the pre-contrast phase (the image centre where the mask shows no dip:
:mod:`Training.breasts`; the manifest's ``midline_source`` says which). A breast's label is 1 where the expert
mask lies in it (at least :data:`Training.breasts.LESION_SHARE` of the mask's voxels; both breasts where the
workbook marks bilateral cancer), else 0, as the ODELIA consortium labels malignant-only cohorts. A study
without an expert mask is labelled from ``breast_coordinates``, which the published JSON stores in numpy's
(z, y, x) order: its ``x`` is axis 0 of SimpleITK's array, i.e. the slice index k, and its ``z`` the column i.
A single-breast acquisition (``view`` sagittal or ``bilateral_mri`` 0, as NACT's) gives one unit, ``single``,
label 1. The positive breast's lesion centre (manifest) is the centroid of the mask's voxels in it (the box's
centre without a mask); its case folder links the mask as ``truth/lesion_mask`` (:mod:`Training.unitfolder`).
Phases: the manifest records each study's post-contrast phases and the workbook's ``acquisition_times``; each
unit folder holds them as ``times.json``, without an injection time (the workbook gives none), so a model built
for given phases takes them by number (``preprocess --phases``, :mod:`BreastCMSLLib.pipeline.model_phases`).

Splits: the official ``train_split``/``test_split``; ``--val-fraction`` of the training studies (seeded,
whole studies: both breasts go together) become ``val``. A study in neither column is drawn the same way
and noted in the report.

Errors. A missing root, workbook, split table or workbook column stops the run (one line, exit 2); a
study that fails (a phase file missing, a JSON key missing, an unreadable volume) is listed with its reason
in ``<manifest>_report.csv`` (every study, ``ok`` or ``failed``) and the others go on. The manifest is
written atomically (:mod:`Training.unitmanifest`).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.cohort.manifest import Case
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.volumes import read_volume

from .breasts import LESION_SHARE, Midline, find_midline, mask_centroid, mask_shares, side_of
from .tables import read_table
from .unitfolder import write_unit_folder
from .unitmanifest import Unit, write_units

WORKBOOK = "clinical_and_imaging_info.xlsx"
SHEET = "dataset_info"
SPLITS = "train_test_splits.csv"
BOX_KEYS = ("x_min", "x_max", "y_min", "y_max", "z_min", "z_max")
REPORT_COLUMNS = ("study", "status", "units", "labels", "midline_source", "lesion_truth", "post_phases", "note")


def child(folder: Path, name: str) -> Path | None:
    """The entry of ``folder`` named ``name`` without regard to case (an exact match first), or None."""
    exact = folder / name
    if exact.exists():
        return exact
    lowered = name.lower()
    return next((p for p in sorted(folder.iterdir()) if p.name.lower() == lowered), None) if folder.is_dir() else None


def required(folder: Path, name: str) -> Path:
    found = child(folder, name)
    if found is None:
        raise InputError(folder / name, "no such file or folder (MAMA-MIA layout)")
    return found


def phase_files(study_dir: Path, study: str) -> list[Path]:
    """``<id>_0000 ... <id>_000N`` of a study folder in phase order (pre-contrast first); gaps are an error."""
    pattern = re.compile(rf"^{re.escape(study.lower())}_(\d{{4}})\.nii(\.gz)?$")
    found = {int(m.group(1)): p for p in study_dir.iterdir() if (m := pattern.match(p.name.lower()))}
    if 0 not in found:
        raise InputError(study_dir / f"{study.lower()}_0000.nii.gz", "no such file (the pre-contrast phase)")
    n = max(found) + 1
    missing = [k for k in range(n) if k not in found]
    if missing:
        raise InputError(study_dir / f"{study.lower()}_{missing[0]:04d}.nii.gz", f"no such file (phases 0-{n - 1})")
    if n < 2:
        raise InputError(study_dir, "only the pre-contrast phase: no post-contrast phase")
    return [found[k] for k in range(n)]


def box_index(info: dict, source: Path) -> tuple[float, float, float]:
    """The continuous (i, j, k) index of the centre of ``primary_lesion.breast_coordinates`` (stored as
    (z, y, x): JSON x is k, y is j, z is i)."""
    try:
        box = info["primary_lesion"]["breast_coordinates"]
    except (KeyError, TypeError):
        raise InputError(source, "no key primary_lesion.breast_coordinates") from None
    missing = [k for k in BOX_KEYS if k not in box]
    if missing:
        raise InputError(source, f"no key primary_lesion.breast_coordinates.{missing[0]}")
    try:
        x, y, z = ((float(box[f"{a}_min"]) + float(box[f"{a}_max"])) / 2.0 for a in "xyz")
    except (TypeError, ValueError):
        raise InputError(source, "primary_lesion.breast_coordinates holds a value that is not a number") from None
    return z, y, x


def parse_times(text: str) -> list[float]:
    """``"[0, 584, 714]"`` -> seconds; empty for an empty cell."""
    if not text.strip():
        return []
    try:
        values = ast.literal_eval(text.strip())
        return [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"acquisition_times {text!r} is not a list of numbers") from None


def _flag(text: str) -> bool | None:
    t = text.strip().lower()
    if t in ("1", "1.0", "true", "yes", "y"):
        return True
    if t in ("0", "0.0", "false", "no", "n"):
        return False
    return None


@dataclass(frozen=True)
class StudyRow:
    """What the workbook says about one study (empty or None where it says nothing)."""

    dataset: str = ""
    view: str = ""
    bilateral_mri: bool | None = None
    bilateral_cancer: bool | None = None
    acquisition_times: str = ""


@dataclass
class StudyResult:
    """One study's units, or its failure; ``notes`` for the report."""

    study: str
    units: list[Unit] = field(default_factory=list)
    error: str = ""
    notes: list[str] = field(default_factory=list)


def read_workbook(path: Path) -> dict[str, StudyRow]:
    """Workbook rows by upper-case patient id (``patient_id`` required; the other columns optional)."""
    table = read_table(path, "patient_id", SHEET)
    pid = table.column("patient_id")
    names = {k: table.column(k, required=False) for k in ("dataset", "view", "bilateral_mri",
                                                          "bilateral_breast_cancer", "acquisition_times")}

    def get(row, key) -> str:
        return row.get(names[key], "") if names[key] else ""

    return {row[pid].upper(): StudyRow(get(row, "dataset"), get(row, "view").lower(), _flag(get(row, "bilateral_mri")),
                                       _flag(get(row, "bilateral_breast_cancer")), get(row, "acquisition_times"))
            for row in table.rows}


def read_splits(path: Path) -> dict[str, str]:
    """The official split by upper-case patient id: ``train`` or ``test``."""
    table = read_table(path, ("train_split", "test_split"))
    out = {}
    for split in ("train", "test"):
        column = table.column(f"{split}_split")
        out.update({row[column].upper(): split for row in table.rows if row.get(column, "")})
    return out


def ingest_study(root_dirs: dict[str, Path], study_dir: Path, row: StudyRow, cases_root: Path) -> StudyResult:
    """One study -> its units' case folders (see the module); an :class:`InputError` names what failed."""
    study = study_dir.name.upper()
    result = StudyResult(study)
    phases = phase_files(study_dir, study)
    pre = read_volume(phases[0])
    mask_path = child(root_dirs["expert"], f"{study.lower()}.nii.gz") if root_dirs["expert"] else None
    mask = sitk.ReadImage(str(mask_path), sitk.sitkUInt8) if mask_path else None
    if mask is not None and not sitk.GetArrayViewFromImage(mask).any():
        result.notes.append(f"{mask_path.name} is empty: labelled from breast_coordinates")
        mask, mask_path = None, None
    info_path = required(root_dirs["info"], f"{study.lower()}.json")
    try:
        info = json.loads(info_path.read_text())
    except ValueError as err:
        raise InputError(info_path, f"not valid JSON ({err})") from None
    times = parse_times(row.acquisition_times)
    if times and len(times) != len(phases):
        result.notes.append(f"acquisition_times lists {len(times)} times for {len(phases)} phases: left out")
        times = []
    imaging = info.get("imaging_data", {}) if isinstance(info, dict) else {}
    dataset = row.dataset or str(imaging.get("dataset", "")) or study.split("_")[0]
    bilateral = row.bilateral_mri if row.bilateral_mri is not None else _flag(str(imaging.get("bilateral", "")))
    single = row.view == "sagittal" or bilateral is False
    box_point = None
    if mask is None:
        box_point = pre.TransformContinuousIndexToPhysicalPoint(box_index(info, info_path))
    truth = "mask" if mask is not None else "box"
    volumes = {"pre": phases[0], **{f"post_{k}": p for k, p in enumerate(phases[1:], start=1)}}
    common = {"study": study, "dataset": dataset, "phase_times_s": times or None, "lesion_truth": truth,
              "source": str(study_dir)}

    def unit(breast: str, label: int, centre, midline: Midline | None) -> Unit:
        sid = study if breast == "single" else f"{study}_{breast}"
        case_dir = cases_root / sid
        info_out = {**common, "breast": breast, "label": label, "center_lps": list(centre) if centre else None,
                    "midline_lps_x": midline.x_mm if midline else None,
                    "midline_source": midline.source if midline else None}
        write_unit_folder(case_dir, volumes, mask_path if label else None, info_out, times[1:])
        return Unit(Case(sid, label, "", case_dir, None, centre), study, breast, dataset, len(phases) - 1,
                    tuple(times), truth if label else "", midline.x_mm if midline else None,
                    midline.source if midline else "")

    if single:
        centre = mask_centroid(mask) if mask is not None else tuple(box_point)
        result.units.append(unit("single", 1, centre, None))
        return result
    midline = find_midline(pre)
    if mask is not None:
        shares = mask_shares(mask, midline)
        positive = {s for s in ("left", "right") if shares[s] >= LESION_SHARE}
    else:
        positive = {side_of(box_point[0], midline)}
    if row.bilateral_cancer:
        positive = {"left", "right"}
    for breast in ("left", "right"):
        label = int(breast in positive)
        centre = None
        if label:
            centre = (mask_centroid(mask, breast, midline) if mask is not None else None) or (
                tuple(box_point) if box_point is not None else None)
        result.units.append(unit(breast, label, centre, midline))
    return result


def _job(args) -> StudyResult:
    root_dirs, study_dir, row, cases_root = args
    try:
        return ingest_study(root_dirs, study_dir, row, cases_root)
    except InputError as err:
        return StudyResult(study_dir.name.upper(), error=str(err))
    except (OSError, ValueError, RuntimeError) as err:  # an unreadable volume, a full disk: this study only
        return StudyResult(study_dir.name.upper(), error=f"{study_dir}: {type(err).__name__}: {str(err)[:200]}")


def assign_val(studies: list[str], official: dict[str, str], val_fraction: float, seed: int) -> dict[str, str]:
    """The split of every study: the official test stays test; of the rest (official train and unlisted),
    ``round(val_fraction * n)`` drawn with ``seed`` become val, the others train."""
    rest = sorted(s for s in studies if official.get(s) != "test")
    n_val = round(val_fraction * len(rest))
    val = set(np.random.default_rng(seed).permutation(rest)[:n_val].tolist()) if n_val else set()
    return {s: "test" if official.get(s) == "test" else ("val" if s in val else "train") for s in studies}


def report_text(results: list[StudyResult]) -> str:
    """The report: one row per study (see :data:`REPORT_COLUMNS`)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(REPORT_COLUMNS)
    for r in sorted(results, key=lambda r: r.study):
        if r.error:
            w.writerow([r.study, "failed", 0, "", "", "", "", r.error])
            continue
        labels = ",".join(f"{u.breast}={u.case.label}" for u in r.units)
        u = r.units[0]
        truth = "mask" if any(x.lesion_truth == "mask" for x in r.units) else "box"
        w.writerow([r.study, "ok", len(r.units), labels, u.midline_source, truth, u.post_phases, "; ".join(r.notes)])
    return out.getvalue()


def report_path(manifest: Path) -> Path:
    return manifest.with_name(f"{manifest.stem}_report.csv")


def ingest_mama_mia(root: str | Path, manifest: str | Path, workers: int = 1, val_fraction: float = 0.1,
                    seed: int = 0) -> dict:
    """Ingest every study below ``root/images``; write the manifest of breasts and its report; return a summary."""
    root, manifest = Path(root), Path(manifest)
    if not root.is_dir():
        raise InputError(root, "no such MAMA-MIA root folder")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError("--val-fraction", f"must be in [0, 1), got {val_fraction}")
    images = required(root, "images")
    segmentations = child(root, "segmentations")
    root_dirs = {"expert": child(segmentations, "expert") if segmentations else None,
                 "info": required(root, "patient_info_files")}
    workbook = read_workbook(required(root, WORKBOOK))
    official = read_splits(required(root, SPLITS))
    study_dirs = sorted(p for p in images.iterdir() if p.is_dir())
    if not study_dirs:
        raise InputError(images, "no study folders")
    cases_root = manifest.parent / "cases"
    cases_root.mkdir(parents=True, exist_ok=True)
    jobs = [(root_dirs, d, workbook.get(d.name.upper(), StudyRow()), cases_root) for d in study_dirs]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_job, jobs))
    else:
        results = [_job(j) for j in jobs]
    for r in results:
        if not r.error and r.study not in workbook:
            r.notes.append(f"not in {WORKBOOK}: no phase times")
        if not r.error and r.study not in official:
            r.notes.append(f"not in {SPLITS}: split drawn as for training studies")
    ok = [r for r in results if not r.error]
    if not ok:
        raise InputError(root, f"no study could be ingested ({len(results)} failures: "
                         f"{'; '.join(r.error for r in results[:3])})")
    splits = assign_val([r.study for r in ok], official, val_fraction, seed)
    units = [Unit(Case(u.case.subject_id, u.case.label, splits[r.study], u.case.case_dir, None, u.case.center_lps),
                  u.study, u.breast, u.dataset, u.post_phases, u.phase_times_s, u.lesion_truth, u.midline_lps_x,
                  u.midline_source) for r in ok for u in r.units]
    write_units(manifest, units)
    atomic_write_text(report_path(manifest), report_text(results))
    return {"manifest": str(manifest), "report": str(report_path(manifest)), "studies": len(ok), "units": len(units),
            "positive": sum(u.case.label for u in units), "failures": {r.study: r.error for r in results if r.error}}


def add_parser(sub) -> None:
    """The ``ingest-mama-mia`` subcommand's arguments (for ``breastcmsl-train``'s subparsers)."""
    p = sub.add_parser("ingest-mama-mia", help="MAMA-MIA (images/, segmentations/expert/, patient_info_files/, "
                       "workbook, split table) -> one manifest row per breast")
    p.add_argument("--root", type=Path, required=True, help="the MAMA-MIA folder")
    p.add_argument("--out", type=Path, required=True, help="manifest CSV to write (cases/ go beside it)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the training studies held out as val")
    p.add_argument("--seed", type=int, default=0, help="seed of the val draw")


def cmd_ingest_mama_mia(args) -> dict:
    return ingest_mama_mia(args.root, args.out, args.workers, args.val_fraction, args.seed)
