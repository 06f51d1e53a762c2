"""The DICOM role overrides typed in the page, as ROLES.json's overrides (see the README's ROLES.json)."""

from __future__ import annotations

import re

from BreastCMSLLib.errors import InputError

ROLE_KEYS = ("t1", "pre", "post", "sub")


def overrides(fields: dict[str, str]) -> dict | None:
    """ROLES.json's overrides from the page's fields: ``t1`` one id (or ``none``), ``pre`` one id, ``post`` and
    ``sub`` ids separated by commas or spaces; empty fields are left to the role rules."""
    if not isinstance(fields, dict):
        raise InputError("roles", "expected the override fields t1, pre, post, sub")
    roles: dict = {}
    for key in ROLE_KEYS:
        ids = [i for i in re.split(r"[\s,]+", str(fields.get(key) or "")) if i]
        if not ids:
            continue
        if key in ("t1", "pre"):
            if len(ids) != 1:
                raise InputError(key, f"names {len(ids)} series; give one")
            roles[key] = None if key == "t1" and ids[0].lower() == "none" else ids[0]
        else:
            roles[key] = ids
    return roles or None
