"""Reading and checking volumes, and the case-folder layout (``t1``, ``pre``/``post_k`` or ``sub_k``).

Images stay SimpleITK images in LPS millimetres; nothing here changes geometry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.errors import InputError

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd")


EXACT_IN_FLOAT32 = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkFloat32)


def check_image(image: sitk.Image, source: str | Path, keep_type: bool = False) -> sitk.Image:
    """Return ``image`` as a 3D float32 scalar image or raise :class:`InputError` naming ``source``.

    ``keep_type``: a voxel type of at most 16 bits (:data:`EXACT_IN_FLOAT32`) is kept (no float32 copy); its values
    are float32 values exactly, so every later conversion (resampling, :func:`~.grids.values_on`) gives the floats
    the cast would have given."""
    if image.GetDimension() != 3:
        raise InputError(source, f"expected a 3D volume, got a {image.GetDimension()}D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            source, f"expected a scalar 3D volume, got {image.GetNumberOfComponentsPerPixel()} components "
            "per voxel (a 4D or vector image)"
        )
    if min(image.GetSize()) < 2:
        raise InputError(source, f"expected a 3D volume, got size {image.GetSize()} (a 2D slice)")
    if image.GetPixelID() != sitk.sitkFloat32 and not (keep_type and image.GetPixelID() in EXACT_IN_FLOAT32):
        image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputError(source, f"{int((~np.isfinite(values)).sum())} voxels are NaN or Inf")
    if float(values.max()) == float(values.min()):
        raise InputError(source, f"the volume is empty (every voxel is {float(values.min())})")
    return image


def read_volume(path: str | Path, keep_type: bool = False) -> sitk.Image:
    """Read one 3D scalar volume with SimpleITK and check it (float32, or its stored type of at most 16 bits with
    ``keep_type``: :func:`check_image`; LPS geometry as stored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reason"
        raise InputError(path, f"cannot be read as an image ({first[:160]})") from None
    return check_image(image, path, keep_type)


def _volume_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        for suffix in VOLUME_SUFFIXES:
            if p.is_file() and p.name.lower().endswith(suffix):
                found.setdefault(p.name[: -len(suffix)].lower(), p)
    return found


@dataclass
class CaseFiles:
    """The files of one case: the non-fat-suppressed T1 (None when the folder has none) and a series of
    subtractions or phases.

    ``kind`` is ``"subtractions"`` (``series`` are sub_1..sub_N) or ``"phases"`` (``series`` is
    pre, post_1..post_N). ``extra`` carries case.json when the folder has one.
    """

    t1: Path | None
    series: list[Path]
    kind: str
    extra: dict = field(default_factory=dict)


def find_case_files(case_dir: str | Path) -> CaseFiles:
    """Find [t1], pre/post_k or sub_k volumes (any SimpleITK-readable suffix) in a case folder; the T1 is
    optional (without it the breast mask comes from the pre-contrast phase)."""
    import json

    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise InputError(case_dir, "no such case folder")
    files = _volume_files(case_dir)

    def numbered(prefix: str) -> list[Path]:
        pat = re.compile(rf"^{prefix}_?(\d+)$")
        hits = sorted((int(m.group(1)), p) for n, p in files.items() if (m := pat.match(n)))
        return [p for _, p in hits]

    subs, posts = numbered("sub"), numbered("post")
    extra = {}
    if (case_dir / "case.json").is_file():
        try:
            extra = json.loads((case_dir / "case.json").read_text())
        except (OSError, ValueError) as err:
            raise InputError(case_dir / "case.json", f"not valid JSON ({err})") from None
    if subs and not posts:
        return CaseFiles(files.get("t1"), subs, "subtractions", extra)
    if posts and "pre" in files and not subs:
        return CaseFiles(files.get("t1"), [files["pre"], *posts], "phases", extra)
    raise InputError(
        case_dir, "expected either sub_1..sub_N or pre + post_1..post_N volumes (t1 optional) "
        f"(found: {', '.join(sorted(files)) or 'nothing readable'})"
    )
