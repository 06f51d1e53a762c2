"""The DICOM role overrides a face takes as text (one field per role key of ROLES.json), as ROLES.json's
overrides; the role rules (:func:`~BreastCMSLLib.dicom.roles.check_overrides`, the assignment) check them."""

from __future__ import annotations

import re

from BreastCMSLLib.dicom.roles import ROLE_KEYS, check_overrides
from BreastCMSLLib.errors import InputError

FIELDS = ROLE_KEYS  # the form's fields, one per key of ROLES.json


def role_overrides(fields: dict[str, str], source: str = "roles") -> dict | None:
    """ROLES.json's overrides from text fields: ``t1`` (or ``none``: no T1), ``pre``, ``post`` and ``sub``, each
    series ids (number, UID or ``number:phase``) separated by commas or spaces; empty fields are left to the
    role rules (None when all are empty). A field with one id gives that id, with several a list, as ROLES.json
    would hold them; an :class:`InputError` names ``source``."""
    if not isinstance(fields, dict):
        raise InputError(source, f"expected the override fields {', '.join(FIELDS)}")
    roles: dict = {}
    for key in FIELDS:
        ids = [i for i in re.split(r"[\s,]+", str(fields.get(key) or "")) if i]
        if key == "t1" and [i.lower() for i in ids] == ["none"]:
            roles[key] = None
        elif ids:
            roles[key] = ids[0] if len(ids) == 1 and key in ("t1", "pre") else ids
    return check_overrides(roles, source) if roles else None
