"""The cases of a cohort: rows of a cohort manifest, or the subfolders of a root folder.

A case is a case folder (``[t1]`` + ``pre``/``post_k`` or ``sub_k`` volumes, as ``breastcmsl analyze`` reads it) or a
DICOM study (series roles as ``breastcmsl roles`` assigns them; a ``ROLES.json`` or ``PATTERNS.json`` in the study
folder is honoured). Centres are LPS mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.volumes import VOLUME_SUFFIXES

STUDY_FILES = ("ROLES.json", "PATTERNS.json")  # per-study role files, honoured when present


@dataclass(frozen=True)
class CaseSource:
    """One case to analyze: ``id`` (its output folder's name), its folder, and what the manifest says about it
    (``label`` 0/1, the lesion ``centre`` in LPS mm and the FTV region ``roi_box``: two LPS corners in mm,
    ``(x1, y1, z1, x2, y2, z2)``; each or None)."""

    id: str
    folder: Path
    label: int | None = None
    centre: tuple[float, float, float] | None = None
    roi_box: tuple[float, ...] | None = None

    @property
    def kind(self) -> str | None:
        """``"folder"`` (volume files in the folder), ``"dicom"`` (other files below it) or None (nothing)."""
        if not self.folder.is_dir():
            return None
        if any(p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES) for p in self.folder.iterdir()):
            return "folder"
        if any(p.is_file() and p.name not in STUDY_FILES for p in self.folder.rglob("*")):
            return "dicom"
        return None

    def study_file(self, name: str) -> Path | None:
        path = self.folder / name
        return path if path.is_file() else None


def from_manifest(path: str | Path) -> list[CaseSource]:
    """The cases of a cohort manifest (read as ``breastcmsl-train`` reads it), in its row order."""
    from BreastCMSLLib.cohort.manifest import read_rows

    cases = read_rows(path)
    for c in cases:
        if "/" in c.subject_id or "\\" in c.subject_id or c.subject_id.startswith("."):
            raise InputError(path, f"subject_id {c.subject_id!r} cannot name an output folder (no /, \\ or "
                             "leading .)")
    return [CaseSource(c.subject_id, c.case_dir, c.label, c.center_lps, c.roi_box) for c in cases]


def from_root(root: str | Path, out: str | Path) -> list[CaseSource]:
    """Every non-hidden subfolder of ``root`` (except ``out``) as a case named by the folder, in name order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "no such folder of cases")
    out = Path(out).resolve()
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.resolve() != out)
    if not folders:
        raise InputError(root, "holds no case folders or DICOM studies (one per subfolder)")
    return [CaseSource(p.name, p) for p in folders]
