"""What the page may open: case folders and DICOM studies under ``--data``, models under ``--models``.

Every path the browser names goes through :func:`confined`: the name is resolved (symlinks followed) and
must stay inside its root folder, so ``../..`` or a symlink pointing out of the root is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.panel.cases import is_case_folder


def confined(root: Path, name: str, what: str) -> Path:
    """``root / name`` with symlinks resolved; InputError unless it lies strictly inside ``root``."""
    base = root.resolve()
    path = (base / name).resolve()
    if not name or path == base or not path.is_relative_to(base):
        raise InputError(name or "(empty)", f"is not a {what} under {root}; refused")
    return path


@dataclass(frozen=True)
class Catalog:
    """The two roots a tab may read from."""

    data: Path
    models: Path

    def cases(self) -> list[dict]:
        """Folders under the data root (those resolving inside it), each a case folder or a DICOM study."""
        found = []
        for entry in sorted(self.data.iterdir()):
            try:
                folder = confined(self.data, entry.name, "case")
            except InputError:
                continue
            if folder.is_dir():
                found.append({"name": entry.name, "kind": "case" if is_case_folder(folder) else "dicom"})
        return found

    def case(self, name: str) -> tuple[Path, str]:
        """(folder, kind) of a case by its name; refused outside the data root."""
        folder = confined(self.data, name, "case folder or DICOM study")
        if not folder.is_dir():
            raise InputError(name, f"no such case under {self.data}")
        return folder, "case" if is_case_folder(folder) else "dicom"

    def model(self, name: str) -> Path:
        """A model file by its file name; refused outside the models root."""
        path = confined(self.models, name, "model file")
        if not path.is_file():
            raise InputError(name, f"no such model under {self.models}")
        return path
