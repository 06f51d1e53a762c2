"""Making a phantom case from its seed, writing its folder, and ``breastcmsl synth`` (both in one call)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.atomic import replace_folder, staging_folder
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.phantom.case import PhantomCase, check_output
from BreastCMSLLib.phantom.grid import IDENTITY, resolve_grid
from BreastCMSLLib.phantom.parameters import (
    DEFAULT_DIFFICULTY,
    LESION_PLACEMENTS,
    PhantomConfig,
    draw_parameters,
    streams,
)
from BreastCMSLLib.phantom.render import render
from BreastCMSLLib.pipeline.phase_times import write_times_file


def make_case(seed: int, cfg: PhantomConfig | None = None) -> PhantomCase:
    """Synthesize one case, deterministic per ``seed`` (same anatomy on every grid of ``cfg``; None: the
    defaults of :class:`PhantomConfig`)."""
    cfg = PhantomConfig() if cfg is None else cfg
    if not 0.0 <= cfg.difficulty <= 1.0:
        raise InputError("difficulty", f"must lie in [0, 1], got {cfg.difficulty}")
    if cfg.label not in (None, 0, 1):
        raise InputError("label", f"must be 0 (benign), 1 (malignant) or None, got {cfg.label}")
    if cfg.lesion_placement not in LESION_PLACEMENTS:
        raise InputError("lesion_placement", f"expected one of {', '.join(LESION_PLACEMENTS)}, "
                         f"got {cfg.lesion_placement!r}")
    grid = resolve_grid(cfg.shape, cfg.spacing, cfg.origin, cfg.direction)
    case = render(draw_parameters(seed, cfg), grid, np.random.default_rng(streams(seed)[1]))
    case.truth.update(seed=int(seed), difficulty=float(cfg.difficulty), lesion_placement=cfg.lesion_placement)
    return case


def write_case(case: PhantomCase, out_dir: str | Path, inputs: str = "phases", suffix: str = ".nrrd",
               overwrite: bool = False, with_t1: bool = True) -> dict:
    """Write a case folder atomically (temporary folder, then rename) and return its case.json dict.

    ``inputs="phases"``: t1, pre, post_1..post_6; ``"subtractions"``: t1, sub_k = post_k - pre (int16);
    ``with_t1=False`` leaves the T1 out (fat-suppressed series only).
    Truth: truth/lesion_mask, truth/breast_mask, truth/tissue (labels in case.json); the phase times (s after the
    injection) in times.json (:mod:`BreastCMSLLib.pipeline.phase_times`).
    """
    check_output(inputs, suffix)
    volumes = case.series(inputs, with_t1)
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (overwrite or not any(out_dir.iterdir()))):
        raise InputError(out_dir, "already exists and is not an empty folder")
    with staging_folder(out_dir) as tmp:
        (tmp / "truth").mkdir()
        volumes.update({"truth/lesion_mask": case.lesion_mask, "truth/breast_mask": case.breast_mask,
                        "truth/tissue": case.tissue})
        for name, image in volumes.items():
            sitk.WriteImage(image, str(tmp / f"{name}{suffix}"), useCompression=suffix.endswith(".gz"))
        truth = dict(case.truth, inputs=inputs, files=sorted(f"{n}{suffix}" for n in volumes))
        (tmp / "case.json").write_text(json.dumps(truth, indent=1))
        write_times_file(tmp, [60.0 * t for t in case.truth["phase_times_min"]], injection_s=0.0)
        replace_folder(tmp, out_dir)
    return truth


def synth_case(out_dir: str | Path, seed: int = 0, label: int | None = None,
               shape: tuple[int, int, int] | None = None, spacing: tuple[float, float, float] | None = None,
               inputs: str = "phases", difficulty: float = DEFAULT_DIFFICULTY, malignant_fraction: float = 0.5,
               origin: tuple[float, float, float] | None = None, direction: tuple[float, ...] = IDENTITY,
               suffix: str = ".nrrd", overwrite: bool = False, lesion_placement: str = "tissue") -> dict:
    """``breastcmsl synth``: synthesize one case and write its folder; returns the case.json dict.

    A plain top-level function of plain arguments, so cohorts can call it from worker processes.
    """
    check_output(inputs, suffix)
    cfg = PhantomConfig(shape=None if shape is None else tuple(shape),
                        spacing=None if spacing is None else tuple(spacing),
                        origin=None if origin is None else tuple(origin), direction=tuple(direction),
                        difficulty=difficulty, label=label, malignant_fraction=malignant_fraction,
                        lesion_placement=lesion_placement)
    return write_case(make_case(seed, cfg), out_dir, inputs=inputs, suffix=suffix, overwrite=overwrite)
