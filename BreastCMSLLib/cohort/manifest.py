"""The cohort manifest: one CSV for phantoms and real data alike.

Columns ``subject_id,label,split,case_dir,birads,center_lps_x,center_lps_y,center_lps_z``; ``case_dir``
is relative to the manifest's folder; ``birads`` and the lesion centre (LPS mm) are optional. An empty
``split`` is assigned by a seeded, label-stratified split in the paper's proportions 1204/165/346.

An optional column ``roi_box`` gives a region for the functional tumour volume (``analyze-cohort``'s ``ftv_ml``):
two corners of an axis-aligned box in LPS mm, ``"x1 y1 z1 x2 y2 z2"`` (empty: none).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from BreastCMSLLib.errors import InputError

COLUMNS = ("subject_id", "label", "split", "case_dir", "birads", "center_lps_x", "center_lps_y", "center_lps_z")
OPTIONAL_COLUMNS = ("roi_box",)  # written only when a case has one
SPLITS = ("train", "val", "test")
PAPER_PROPORTIONS = (1204, 165, 346)  # train / val / test cases of Luo et al. 2019


@dataclass(frozen=True)
class Case:
    """One manifest row. ``case_dir`` is absolute; ``center_lps`` in LPS mm or None; ``birads`` or None;
    ``roi_box`` (x1, y1, z1, x2, y2, z2) LPS mm or None."""

    subject_id: str
    label: int
    split: str
    case_dir: Path
    birads: int | None = None
    center_lps: tuple[float, float, float] | None = None
    roi_box: tuple[float, ...] | None = None


def _optional_float(text: str) -> float | None:
    return float(text) if text.strip() else None


def read_manifest(path: str | Path, seed: int = 0) -> list[Case]:
    """Read and check a manifest; empty splits are filled by :func:`assign_splits` with ``seed``."""
    return assign_splits(read_rows(path), seed)


def read_rows(path: str | Path) -> list[Case]:
    """Read and check a manifest's rows as they stand (empty splits stay empty)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such manifest file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"subject_id", "label", "case_dir"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(path, f"missing manifest columns {sorted(missing)} (expected {','.join(COLUMNS)})")
        rows = list(reader)
    cases: list[Case] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        sid = (row.get("subject_id") or "").strip()
        where = f"{path}, line {line}"
        if not sid or sid in seen:
            raise InputError(where, f"subject_id {sid!r} is empty or repeated")
        seen.add(sid)
        label = (row.get("label") or "").strip()
        if label not in ("0", "1"):
            raise InputError(where, f"label must be 0 (benign) or 1 (malignant), got {label!r}")
        split = (row.get("split") or "").strip()
        if split not in ("", *SPLITS):
            raise InputError(where, f"split must be train, val, test or empty, got {split!r}")
        try:
            birads = int(row["birads"]) if (row.get("birads") or "").strip() else None
            xyz = [_optional_float(row.get(f"center_lps_{a}") or "") for a in "xyz"]
            box = tuple(float(v) for v in (row.get("roi_box") or "").split()) or None
        except ValueError as err:
            raise InputError(where, f"bad number ({err})") from None
        if box is not None and len(box) != 6:
            raise InputError(where, f"roi_box must be 6 numbers 'x1 y1 z1 x2 y2 z2' (LPS mm), got {len(box)}")
        center = tuple(xyz) if None not in xyz else None
        cases.append(Case(sid, int(label), split, (path.parent / row["case_dir"].strip()).resolve(), birads,
                          center, box))
    if not cases:
        raise InputError(path, "the manifest has no cases")
    return cases


def assign_splits(cases: list[Case], seed: int = 0, proportions=PAPER_PROPORTIONS) -> list[Case]:
    """Give cases with an empty split train/val/test, label-stratified, in ``proportions``, seeded.

    Cases that already have a split keep it. Uses scikit-learn's stratified ``train_test_split`` twice.
    """
    todo = [c for c in cases if not c.split]
    if not todo:
        return cases
    from sklearn.model_selection import train_test_split  # the train extra: only where splits are assigned

    n = len(todo)
    total = float(sum(proportions))
    n_test = max(1, round(n * proportions[2] / total)) if n >= 3 else 0
    n_val = max(1, round(n * proportions[1] / total)) if n >= 3 else 0
    idx = np.arange(n)
    labels = np.array([c.label for c in todo])
    splits = np.array(["train"] * n, dtype=object)

    def stratify(sub: np.ndarray, k: int):
        counts = np.bincount(labels[sub], minlength=2)
        return labels[sub] if counts.min() >= 2 and k >= 2 else None

    if n_test:
        rest, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=stratify(idx, n_test))
        splits[test] = "test"
        _, val = train_test_split(rest, test_size=n_val, random_state=seed + 1, stratify=stratify(rest, n_val))
        splits[val] = "val"
    assigned = iter(splits)
    return [c if c.split else _with_split(c, next(assigned)) for c in cases]


def _with_split(case: Case, split: str) -> Case:
    return dataclasses.replace(case, split=split)


def manifest_text(cases: list[Case], root: Path) -> str:
    """CSV text of ``cases`` with ``case_dir`` relative to ``root`` (the manifest's folder)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    boxes = any(c.roi_box for c in cases)
    w.writerow(COLUMNS + (OPTIONAL_COLUMNS if boxes else ()))
    for c in cases:
        rel = Path(os.path.relpath(Path(c.case_dir).resolve(), root.resolve()))
        center = [f"{v:.4f}" for v in c.center_lps] if c.center_lps else ["", "", ""]
        box = [" ".join(f"{v:.4f}" for v in c.roi_box or ())] if boxes else []
        w.writerow([c.subject_id, c.label, c.split, rel.as_posix(), "" if c.birads is None else c.birads, *center,
                    *box])
    return out.getvalue()


def write_manifest(path: str | Path, cases: list[Case]) -> None:
    """Write ``cases`` as a manifest at ``path`` (atomically)."""
    from BreastCMSLLib.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, manifest_text(cases, path.parent))


def read_centers(path: str | Path) -> dict[str, tuple[float, float, float]]:
    """A centres CSV ``subject_id,x,y,z`` (LPS mm) as a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such centres file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"subject_id", "x", "y", "z"} <= set(reader.fieldnames or []):
            raise InputError(path, "expected columns subject_id,x,y,z (LPS mm)")
        try:
            return {r["subject_id"].strip(): (float(r["x"]), float(r["y"]), float(r["z"])) for r in reader}
        except ValueError as err:
            raise InputError(path, f"bad number ({err})") from None
