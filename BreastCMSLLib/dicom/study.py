"""A DICOM study read as one case: its role files (ROLES.json, PATTERNS.json), the roles assigned by the rules of
:mod:`.roles`, and the chosen phases read as volumes (LPS mm, as DICOM stores them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk

from BreastCMSLLib.dicom.roles import RoleAssignment, RolePatterns, assign_roles, check_overrides
from BreastCMSLLib.dicom.series import Phase, Series, read_phase, scan_study
from BreastCMSLLib.errors import InputError

if TYPE_CHECKING:  # preprocess pulls in torch; ``study`` alone stays light
    from BreastCMSLLib.pipeline.preprocess import CaseInputs


def load_overrides(path: str | Path) -> dict:
    """Read ROLES.json: {"t1": id, "pre": id, "post": [id, ...]} or {"t1": id, "sub": [id, ...]}, any subset.

    An id is a SeriesInstanceUID, a series number, or "number:phase" (1-based phase of a multi-phase series);
    ``"t1": null`` says the study has no T1 to use (the mask then comes from the pre-contrast phase).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot be read as JSON ({err})") from None
    return check_overrides(data, path)


@dataclass
class StudyCase:
    """A DICOM study read as one case: the volumes, the roles that chose them, the reference phase."""

    inputs: CaseInputs
    assignment: RoleAssignment

    @property
    def reference(self) -> Phase:
        """The phase whose grid every output map lands on (first post-contrast, or first subtraction)."""
        return self.assignment.reference.phase


def load_study(study_dir: str | Path, overrides: dict | None = None, n_channels: int | None = None,
               patterns: RolePatterns | None = None, overrides_source: str | None = None) -> StudyCase:
    """Scan a DICOM study, assign the roles (``patterns`` None: the default :class:`RolePatterns`) and read the
    chosen volumes as :class:`CaseInputs` (``t1`` None and ``sources[0]`` None when the study has no T1)."""
    from BreastCMSLLib.pipeline.preprocess import CaseInputs

    series = scan_study(study_dir)
    assignment = assign_roles(series, overrides, n_channels, patterns or RolePatterns(), str(study_dir),
                              overrides_source)
    images: list[sitk.Image] = [read_phase(p) for p in assignment.phases()]
    sources = [f"{study_dir} series {e.phase.label} '{e.phase.series.description}' ({e.role})"
               for e in assignment.entries]
    if assignment.t1 is None:
        images, sources = [None, *images], [None, *sources]
    inputs = CaseInputs(images[0], images[1:], assignment.kind, sources)
    return StudyCase(inputs, assignment)


def load_patterns(path: str | Path | None) -> RolePatterns:
    """PATTERNS.json: {"field": "regular expression", ...} replacing :class:`RolePatterns` defaults field by
    field (e.g. a site's own wording); None gives the defaults."""
    if path is None:
        return RolePatterns()
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot be read as JSON ({err})") from None
    return RolePatterns.from_overrides(data, path)


class RolesError(InputError):
    """Roles could not be assigned; carries the study's series so that the user sees what to name."""

    def __init__(self, err: InputError, series: list[Series], patterns: RolePatterns):
        super().__init__(err.source, err.problem)
        self.series, self.patterns = series, patterns


def study_roles(study_dir: str | Path, roles_file: str | Path | None = None, n_channels: int | None = None,
                patterns_file: str | Path | None = None) -> RoleAssignment:
    """``breastcmsl roles``: scan a study and assign its roles (ROLES.json and PATTERNS.json optional).
    Raises :class:`RolesError` (with the study's series) when the roles cannot be assigned."""
    overrides = load_overrides(roles_file) if roles_file else None
    patterns = load_patterns(patterns_file)
    series = scan_study(study_dir)
    try:
        return assign_roles(series, overrides, n_channels, patterns, str(study_dir),
                            str(roles_file) if roles_file else None)
    except InputError as err:
        raise RolesError(err, series, patterns) from None


def study_inputs(study_dir: str | Path, roles_file: str | Path | None = None, n_channels: int | None = None,
                 patterns_file: str | Path | None = None) -> tuple[StudyCase, dict]:
    """``analyze --dicom``: the study's case and the ``inputs`` record for result.json (series per role)."""
    overrides = load_overrides(roles_file) if roles_file else None
    study = load_study(study_dir, overrides, n_channels, load_patterns(patterns_file),
                       str(roles_file) if roles_file else None)
    sources = study.inputs.sources
    used = {"kind": study.inputs.kind, "t1": sources[0], "series": sources[1:],
            "dicom": {"study": str(study_dir), "roles_file": str(roles_file) if roles_file else None,
                      "patterns_file": str(patterns_file) if patterns_file else None,
                      "roles": [e.as_dict() for e in study.assignment.entries]}}
    return study, used
