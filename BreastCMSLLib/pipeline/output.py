"""Writing an analysis: result.json, the maps and labelmaps as NRRD, overview.png; all or nothing."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.atomic import staging_folder
from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.network.calibration import operating_line
from BreastCMSLLib.pipeline.maps import Analysis

# the fine map is absent from analyses run without it and from older folders
RESULT_FILES = ("result.json", *(f"{m}{s}.nrrd" for m in MAP_NAMES for s in ("", "_label")), "overview.png")
OPTIONAL_FILES = {f"{m}_seg.dcm" for m in MAP_NAMES}  # written only on request (``breastcmsl analyze --dicom-seg``)
OPTIONAL_FILES |= {"pe_early.nrrd", "ser.nrrd", "ser_label.nrrd"}  # ``analyze --kinetics`` (pipeline/kinetics_case.py)


def geometry_of(image: sitk.Image) -> dict:
    """Size (voxels) and LPS spacing/origin (mm)/direction (row-major 3x3) of an image."""
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
            "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def calibration_fields(analysis: Analysis) -> dict:
    """result.json's calibration fields: the uncalibrated probability, T, the operating point's validation
    sensitivity and specificity (with 95 % CIs and n) and the one plain line the faces show."""
    cal, op = analysis.calibration, analysis.calibration.operating_point

    def number(x: float) -> float | None:  # JSON has no NaN: an uncalibrated model's figures are null
        return x if math.isfinite(x) else None

    return {
        "probability_uncalibrated": analysis.probability_uncalibrated,
        "calibrated": cal.fitted,
        "temperature": cal.temperature,
        "operating_point": {"rule": op.rule, "sensitivity": number(op.sensitivity),
                            "sensitivity_ci": [number(v) for v in op.sensitivity_ci],
                            "specificity": number(op.specificity),
                            "specificity_ci": [number(v) for v in op.specificity_ci], "n_validation": cal.n_val},
        "operating_line": operating_line(cal),
    }


def phases_used(analysis: Analysis) -> dict | None:
    """result.json's ``phases_used``: the post-contrast phases (numbers from 1) the model took of the study's, their
    times (s after the injection, or null), the rule that chose them and one plain line."""
    study = analysis.prep.study
    if study is None:
        return None
    line = f"post-contrast phases {', '.join(map(str, study.phases))} of {study.phases_of}"
    if study.phase_rule == "nearest time":
        line += " (nearest the model's phase times)"
    elif study.phase_rule == "phase number":
        line += " (the model's phase numbers: the study gives no acquisition times)"
    return {"phases": list(study.phases), "of": study.phases_of, "rule": study.phase_rule,
            "times_s": None if study.phase_times_s is None else list(study.phase_times_s), "line": line}


def result_dict(analysis: Analysis, inputs_used: dict, centre_lps=None) -> dict:
    """The content of result.json."""
    result = {
        "applicability": analysis.applicability,
        "probability": analysis.probability,
        "cos_theta": analysis.cos_theta,
        "logit": analysis.logit,
        "prediction": analysis.prediction,
        "threshold": analysis.threshold,
        **calibration_fields(analysis),
        "model": analysis.model,
        "coam_peak_lps": list(analysis.coam_peak_lps),
        "cam_peak_lps": list(analysis.cam_peak_lps),
        **({"fine_peak_lps": list(analysis.fine_peak_lps), "fine_map": dataclasses.asdict(analysis.fine_config)}
           if analysis.fine is not None else {}),
        "label_fraction": analysis.label_fraction,
        "mask_source": analysis.mask_source,
        "phases_used": phases_used(analysis),
        "inputs": inputs_used,
        "reference_geometry": geometry_of(analysis.coam),
        "device": analysis.device,
        "precision": analysis.precision,
        "timings": {k: round(v, 4) for k, v in analysis.timings.items()},
    }
    if analysis.breasts:
        result["breasts"] = analysis.breasts
    if centre_lps is not None:
        centre = np.asarray(centre_lps, dtype=float)
        result["centre_lps"] = centre.tolist()
        for m in MAP_NAMES:
            peak = getattr(analysis, f"{m}_peak_lps")
            if peak is not None:
                result[f"{m}_distance_mm"] = float(np.linalg.norm(np.asarray(peak) - centre))
    return result


def write_analysis(analysis: Analysis, out_dir: str | Path, inputs_used: dict, centre_lps=None,
                   extra: dict[str, Callable[[Path], None]] | None = None, fields: dict | None = None) -> dict:
    """Write every result file into ``out_dir`` (created if needed) atomically; return result.json's dict.

    ``extra`` maps further file names to writers ``write(path)`` (e.g. the DICOM SEG, the kinetics maps);
    ``fields`` are further result.json fields (e.g. ``kinetics``). Everything is
    written into a hidden staging folder beside ``out_dir`` and moved in only when all succeeded, so a
    failure leaves no partial output; result files of an earlier run that this one does not write
    (an old ``coam_seg.dcm``, the fine map of an analysis run without it) are removed.
    """
    from BreastCMSLLib.pipeline.figures import overview_figure, save_figure

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    extra = extra or {}
    with staging_folder(out_dir) as tmp:
        # gzip shrinks float32 maps little for its time, the uint8 labelmaps ~50x (benchmarks/README.md). SimpleITK
        # releases the GIL: the volumes are written while the figure is drawn.
        with ThreadPoolExecutor(2) as pool:
            images = {f"{m}{s}": getattr(analysis, f"{m}{s}") for m in MAP_NAMES for s in ("", "_label")}
            written = [pool.submit(sitk.WriteImage, image, str(tmp / f"{name}.nrrd"), name.endswith("_label"))
                       for name, image in images.items() if image is not None]
            save_figure(overview_figure(analysis, centre_lps), tmp / "overview.png")
            for done in written:
                done.result()
        for name, write in extra.items():
            write(tmp / name)
        analysis.timings["write_s"] = time.perf_counter() - t0
        result = {**result_dict(analysis, inputs_used, centre_lps), **(fields or {})}
        (tmp / "result.json").write_text(json.dumps(result, indent=2))
        out_dir.mkdir(exist_ok=True)
        written = [name for name in (*RESULT_FILES, *extra) if (tmp / name).exists()]
        for name in written:
            os.replace(tmp / name, out_dir / name)
        for name in OPTIONAL_FILES.union(RESULT_FILES).difference(written):
            (out_dir / name).unlink(missing_ok=True)
    return result
