"""The manifest of a cohort of breasts: the cohort manifest's columns, then what each unit adds.

A unit is one breast of a bilateral study (``breast`` ``left`` or ``right``) or the one breast of a
single-breast acquisition (``single``); its ``subject_id`` is ``<study>_<breast>`` (the study's id for a single
breast) and its ``case_dir`` holds the study's volumes with the unit in ``case.json``. The extra columns:
``study``, ``breast``, ``dataset``, ``post_phases`` (post-contrast phases), ``phase_times_s`` (acquisition time
of each phase, pre-contrast first, seconds, ``;``-separated; empty where the cohort gives none),
``lesion_truth`` (``mask``, ``box`` or empty), ``midline_lps_x`` (mm) and ``midline_source`` (``mask``,
``centre``, or empty for a single breast). :func:`BreastCMSLLib.cohort.manifest.read_manifest` reads such a
manifest as any other (extra columns are ignored); :func:`read_units` reads the extras too.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.cohort.manifest import Case, manifest_text, read_rows
from BreastCMSLLib.errors import InputError

UNIT_COLUMNS = ("study", "breast", "dataset", "post_phases", "phase_times_s", "lesion_truth", "midline_lps_x",
                "midline_source")


@dataclass(frozen=True)
class Unit:
    """One manifest row of a cohort of breasts (see the module)."""

    case: Case
    study: str
    breast: str
    dataset: str = ""
    post_phases: int = 0
    phase_times_s: tuple[float, ...] = ()
    lesion_truth: str = ""
    midline_lps_x: float | None = None
    midline_source: str = ""

    def extras(self) -> list[str]:
        return [self.study, self.breast, self.dataset, str(self.post_phases),
                ";".join(f"{t:g}" for t in self.phase_times_s), self.lesion_truth,
                "" if self.midline_lps_x is None else f"{self.midline_lps_x:.3f}", self.midline_source]


def units_text(units: list[Unit], root: Path) -> str:
    """CSV text of ``units`` (``case_dir`` relative to ``root``, the manifest's folder)."""
    base = list(csv.reader(io.StringIO(manifest_text([u.case for u in units], root))))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*base[0], *UNIT_COLUMNS])
    for row, unit in zip(base[1:], units, strict=True):
        w.writerow([*row, *unit.extras()])
    return out.getvalue()


def write_units(path: str | Path, units: list[Unit]) -> None:
    """Write the manifest of ``units`` at ``path`` atomically."""
    path = Path(path)
    atomic_write_text(path, units_text(units, path.parent))


def lists_breasts(path: str | Path) -> bool:
    """True when the manifest at ``path`` is a manifest of breasts (it has the ``breast`` column)."""
    try:
        with open(path, newline="") as f:
            return "breast" in (next(csv.reader(f), None) or [])
    except OSError:
        return False  # a missing manifest is reported by its reader


def read_units(path: str | Path) -> list[Unit]:
    """A manifest of breasts with its unit columns (a missing unit column is an :class:`InputError`)."""
    path = Path(path)
    cases = read_rows(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in UNIT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(path, f"missing unit columns {missing} (a manifest of breasts has "
                             f"{', '.join(UNIT_COLUMNS)})")
        rows = list(reader)
    units = []
    for case, row in zip(cases, rows, strict=True):
        times = tuple(float(t) for t in row["phase_times_s"].split(";") if t.strip())
        midline = float(row["midline_lps_x"]) if row["midline_lps_x"].strip() else None
        units.append(Unit(case, row["study"], row["breast"], row["dataset"], int(row["post_phases"] or 0), times,
                          row["lesion_truth"], midline, row["midline_source"]))
    return units
