"""CAM vs COAM localization: distance (mm) between the annotated lesion centre and each map's peak.

For the cases the model calls malignant (as the paper does), each case is analyzed with the core's
:func:`BreastCMSLLib.analyze.analyze_case`, i.e. exactly as ``breastcmsl analyze`` does (preprocessing
from the case folder, one forward pass, peaks on the input grid in LPS mm). The decision uses the
run's own prediction on the cached split, the same as ``evaluate`` (for sparse MIL: the maximum
instance probability, see Training/README.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from BreastCMSLLib.analyze import analyze_case
from BreastCMSLLib.atomic import atomic_path, atomic_write_text
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.figures import axial_row
from BreastCMSLLib.modelfile import load_model, read_model_metadata
from BreastCMSLLib.preprocess import load_case

from .evaluate import predict_split
from .manifest import read_centers
from .methods import MIL2D_ARCH
from .runmodel import run_model_path

MONTAGE_CASES = 6


def summarize(values: list[float]) -> dict:
    """mean, (population) std and n of a list of distances in mm."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()) if a.size else math.nan, "std": float(a.std()) if a.size else math.nan,
            "n": int(a.size)}


def localize(run_dir: str | Path, split: str = "test", centers: str | Path | None = None, device: str = "auto",
             cache_dir: str | None = None) -> dict:
    """Write ``RUN_DIR/localize/`` (summary.json, cases.csv, montage.png) and return the summary."""
    run_dir = Path(run_dir)
    model_path = run_model_path(run_dir)
    if read_model_metadata(model_path)[0].arch == MIL2D_ARCH:
        raise InputError(run_dir, "is a 2D MIL run: it has no 3D feature map, so COAM/CAM localization "
                         "(and `breastcmsl analyze`) do not apply to it")
    loaded = load_model(model_path, device="cpu")
    cases, pred, _, _ = predict_split(run_dir, split, cache_dir, device)
    known = read_centers(centers) if centers else {}
    rows, coam_mm, cam_mm, shown = [], [], [], []
    for case, p in zip(cases, pred["probability"], strict=True):
        centre = known.get(case.subject_id, case.center_lps)
        if p < 0.5 or centre is None:
            continue
        a = analyze_case(load_case(case.case_dir), loaded, device=device)
        d_coam = float(np.linalg.norm(np.subtract(a.coam_peak_lps, centre)))
        d_cam = float(np.linalg.norm(np.subtract(a.cam_peak_lps, centre)))
        coam_mm.append(d_coam)
        cam_mm.append(d_cam)
        rows.append([case.subject_id, case.label, f"{p:.6f}", *[f"{v:.3f}" for v in centre],
                     *[f"{v:.3f}" for v in a.coam_peak_lps], *[f"{v:.3f}" for v in a.cam_peak_lps],
                     f"{d_coam:.3f}", f"{d_cam:.3f}"])
        if len(shown) < MONTAGE_CASES:
            shown.append((case.subject_id, a, centre, d_coam, d_cam))
    out = run_dir / "localize"
    out.mkdir(exist_ok=True)
    summary = {"coam_mm": summarize(coam_mm), "cam_mm": summarize(cam_mm), "split": split,
               "cases_called_malignant_with_centre": len(rows)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["subject_id", "label", "probability", "centre_x", "centre_y", "centre_z", "coam_x", "coam_y",
                "coam_z", "cam_x", "cam_y", "cam_z", "coam_mm", "cam_mm"])
    w.writerows(rows)
    atomic_write_text(out / "cases.csv", text.getvalue())
    _montage(out / "montage.png", shown)
    return summary


def _montage(path: Path, shown: list) -> None:
    """One row per case: subtraction, CAM, COAM through the true centre's slice, peaks and centre marked."""
    n = max(1, len(shown))
    fig, axes = plt.subplots(n, 3, figsize=(9, 2.6 * n), squeeze=False)
    for row, (sid, a, centre, d_coam, d_cam) in zip(axes, shown, strict=False):
        grid = a.prep.input_grid
        marks = {"COAM peak": a.coam_peak_lps, "CAM peak": a.cam_peak_lps, "true centre": centre}
        marks = {k: np.array(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in p]))
                 for k, p in marks.items()}
        k = int(np.clip(round(marks["true centre"][2]), 0, grid.GetSize()[2] - 1))
        axial_row(row, a.prep.array[0], a.cam_input, a.coam_input, k, marks)
        row[0].set_title(f"{sid}: COAM {d_coam:.1f} mm, CAM {d_cam:.1f} mm", fontsize=8)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no case called malignant", ha="center")
        for ax in axes[0]:
            ax.set_axis_off()
    else:
        axes[0, 2].legend(loc="lower right", fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
