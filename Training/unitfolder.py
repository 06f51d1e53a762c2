"""A unit's case folder made of links: the study's volumes under the case-folder names (``pre``, ``post_k``),
its lesion truth as ``truth/lesion_mask``, the unit in ``case.json`` and, where the cohort gives them, the
post-contrast phases' times as ``times.json`` (:mod:`BreastCMSLLib.pipeline.phase_times`).

Links, not copies: a public cohort is hundreds of gigabytes and both breasts of a study share its volumes.
Each link is absolute (the cohort may lie anywhere); where the system refuses links (Windows without the
privilege) the file is copied. The folder is written whole or not at all
(:func:`BreastCMSLLib.atomic.staging_folder`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from BreastCMSLLib.atomic import replace_folder, staging_folder
from BreastCMSLLib.pipeline.phase_times import write_times_file
from BreastCMSLLib.pipeline.volumes import VOLUME_SUFFIXES


def volume_suffix(path: Path) -> str:
    """The volume suffix of ``path`` as its name spells it (``.nii.gz``, ``.nrrd``, ...)."""
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix):]
    return path.suffix


def link(target: Path, at: Path) -> None:
    """``at`` -> ``target`` (absolute), or a copy where links are refused."""
    try:
        os.symlink(Path(target).resolve(), at)
    except OSError:
        shutil.copyfile(target, at)


def write_unit_folder(case_dir: Path, volumes: dict[str, Path], truth: Path | None, info: dict,
                      post_s: list[float] | None = None) -> None:
    """``case_dir`` with ``volumes`` (case-folder name -> file) linked, ``truth`` as ``truth/lesion_mask``,
    ``info`` as ``case.json`` and ``post_s`` (post-contrast times, s on the cohort's clock) as ``times.json``."""
    with staging_folder(case_dir) as tmp:
        for name, path in volumes.items():
            link(path, tmp / f"{name}{volume_suffix(path)}")
        if truth is not None:
            (tmp / "truth").mkdir()
            link(truth, tmp / "truth" / f"lesion_mask{volume_suffix(truth)}")
        (tmp / "case.json").write_text(json.dumps(info, indent=1))
        if post_s:
            write_times_file(tmp, post_s, injection_s=None)
        replace_folder(tmp, case_dir)
