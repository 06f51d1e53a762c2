"""CAM vs COAM localization: distance (mm) between the annotated lesion centre and each map's peak.

For the cases the model calls malignant (as the paper does), each case is analyzed with the core's
:func:`BreastCMSLLib.pipeline.analyze.analyze_case`, i.e. exactly as ``breastcmsl analyze`` does (preprocessing
from the case folder, one forward pass, peaks on the input grid in LPS mm, a plateau of maxima resolved
by :mod:`BreastCMSLLib.pipeline.peaks`). The decision uses the run's own prediction on the cached split, the
same as ``evaluate`` (for sparse MIL: the maximum instance probability, see Training/README.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.atomic import atomic_path, atomic_write_text
from BreastCMSLLib.config import NETWORK_STRIDE
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.modelfile import LoadedModel, load_model, read_model_metadata
from BreastCMSLLib.pipeline.analyze import Analysis, analyze_case
from BreastCMSLLib.pipeline.figures import axial_row
from BreastCMSLLib.pipeline.preprocess import load_case

from .evaluate import predict_split
from .manifest import read_centers
from .methods import MIL2D_ARCH
from .runmodel import run_model_path

MONTAGE_CASES = 6
CSV_COLUMNS = ("subject_id", "label", "probability", "centre_x", "centre_y", "centre_z", "coam_x", "coam_y",
               "coam_z", "cam_x", "cam_y", "cam_z", "coam_mm", "cam_mm", "floor_mm")


@dataclass(frozen=True)
class CaseLocalization:
    """One case: lesion centre and the COAM/CAM peaks (LPS mm), their distances to the centre and the
    distance from the centre to the nearest feature-grid centre (mm); ``*_cell``: the feature voxel
    (i, j, k) nearest to the centre and to each peak."""

    subject_id: str
    label: int
    probability: float
    centre: tuple[float, float, float]
    coam_peak: tuple[float, float, float]
    cam_peak: tuple[float, float, float]
    floor_mm: float
    centre_cell: tuple[int, int, int]
    coam_cell: tuple[int, int, int]
    cam_cell: tuple[int, int, int]

    @property
    def coam_mm(self) -> float:
        return float(np.linalg.norm(np.subtract(self.coam_peak, self.centre)))

    @property
    def cam_mm(self) -> float:
        return float(np.linalg.norm(np.subtract(self.cam_peak, self.centre)))

    @property
    def called_malignant(self) -> bool:
        return self.probability >= 0.5


@dataclass(frozen=True)
class MontageRow:
    """What one montage row shows: axial slices (I, J, 1) through the lesion centre and the marks
    (continuous (i, j, k) indices, k relative to that slice)."""

    title: str
    k: int
    subtraction: np.ndarray
    cam: np.ndarray
    coam: np.ndarray
    marks: dict


def summarize(values: list[float]) -> dict:
    """mean, (population) std, median and n of a list of distances in mm."""
    a = np.asarray(values, dtype=float)
    if not a.size:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a)), "n": int(a.size)}


def feature_grid(input_size) -> tuple[int, int, int]:
    """The network's final feature grid (voxels) for an input size: each stride-2 stage rounds up."""
    return tuple(-(-int(n) // NETWORK_STRIDE) for n in input_size)


def nearest_feature(grid: sitk.Image, point) -> tuple[tuple[int, int, int], float]:
    """The feature voxel (i, j, k) whose centre is nearest to an LPS point, and that distance (mm), on the
    input ``grid`` (feature voxel f is centred on input voxel 32 f, see
    :func:`BreastCMSLLib.pipeline.analyze.feature_map_image`)."""
    last = np.array(feature_grid(grid.GetSize())) - 1
    cont = np.array(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in point]))
    f = np.clip(np.rint(cont / NETWORK_STRIDE), 0, last).astype(int)
    centre = grid.TransformContinuousIndexToPhysicalPoint((f * NETWORK_STRIDE).astype(float).tolist())
    return tuple(int(v) for v in f), float(np.linalg.norm(np.subtract(centre, point)))


def montage_row(a: Analysis, centre, title: str) -> MontageRow:
    """The slices of one analyzed case through the lesion centre's axial slice."""
    grid = a.prep.input_grid
    marks = {"COAM peak": a.coam_peak_lps, "CAM peak": a.cam_peak_lps, "true centre": centre}
    marks = {k: np.array(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in p])) for k, p in marks.items()}
    k = int(np.clip(round(marks["true centre"][2]), 0, grid.GetSize()[2] - 1))
    for m in marks.values():
        m[2] -= k
    cut = slice(k, k + 1)
    return MontageRow(title, k, a.prep.array[0][:, :, cut].copy(), a.cam_input[:, :, cut].copy(),
                      a.coam_input[:, :, cut].copy(), marks)


def localize_cases(run_dir: str | Path, split: str = "test", centers: str | Path | None = None,
                   device: str = "auto", cache_dir: str | None = None, only_called: bool = True,
                   montage_cases: int = MONTAGE_CASES,
                   on_case: Callable[[CaseLocalization, Analysis, LoadedModel], None] | None = None,
                   ) -> tuple[list[CaseLocalization], list[MontageRow]]:
    """Analyze the cases of ``split`` that have a lesion centre (only those the model calls malignant
    when ``only_called``); returns the per-case results and the montage rows of the first called ones.
    ``on_case(result, analysis, model)`` is called for each analyzed case."""
    run_dir = Path(run_dir)
    model_path = run_model_path(run_dir)
    if read_model_metadata(model_path)[0].arch == MIL2D_ARCH:
        raise InputError(run_dir, "is a 2D MIL run: it has no 3D feature map, so COAM/CAM localization "
                         "(and `breastcmsl analyze`) do not apply to it")
    loaded = load_model(model_path, device="cpu")
    cases, pred, _, _ = predict_split(run_dir, split, cache_dir, device)
    known = read_centers(centers) if centers else {}
    results, shown = [], []
    for case, p in zip(cases, pred["probability"], strict=True):
        centre = known.get(case.subject_id, case.center_lps)
        if (only_called and p < 0.5) or centre is None:
            continue
        a = analyze_case(load_case(case.case_dir), loaded, device=device)
        grid = a.prep.input_grid
        cell, floor = nearest_feature(grid, centre)
        r = CaseLocalization(case.subject_id, case.label, float(p), tuple(float(v) for v in centre),
                             a.coam_peak_lps, a.cam_peak_lps, floor, cell, nearest_feature(grid, a.coam_peak_lps)[0],
                             nearest_feature(grid, a.cam_peak_lps)[0])
        results.append(r)
        if on_case is not None:
            on_case(r, a, loaded)
        if r.called_malignant and len(shown) < montage_cases:
            shown.append(montage_row(a, centre, f"{r.subject_id}: COAM {r.coam_mm:.1f} mm, CAM {r.cam_mm:.1f} mm"))
    return results, shown


def write_cases_csv(path: Path, results: list[CaseLocalization]) -> None:
    """One row per case (LPS mm, distances in mm)."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        w.writerow([r.subject_id, r.label, f"{r.probability:.6f}", *[f"{v:.3f}" for v in r.centre],
                    *[f"{v:.3f}" for v in r.coam_peak], *[f"{v:.3f}" for v in r.cam_peak],
                    f"{r.coam_mm:.3f}", f"{r.cam_mm:.3f}", f"{r.floor_mm:.3f}"])
    atomic_write_text(path, text.getvalue())


def localize(run_dir: str | Path, split: str = "test", centers: str | Path | None = None, device: str = "auto",
             cache_dir: str | None = None) -> dict:
    """Write ``RUN_DIR/localize/`` (summary.json, cases.csv, montage.png) and return the summary."""
    results, shown = localize_cases(run_dir, split, centers, device, cache_dir)
    out = Path(run_dir) / "localize"
    out.mkdir(exist_ok=True)
    summary = {"coam_mm": summarize([r.coam_mm for r in results]), "cam_mm": summarize([r.cam_mm for r in results]),
               "split": split, "cases_called_malignant_with_centre": len(results)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    write_cases_csv(out / "cases.csv", results)
    write_montage(out / "montage.png", shown)
    return summary


def write_montage(path: Path, shown: list[MontageRow]) -> None:
    """One row per case: subtraction, CAM, COAM through the true centre's slice, peaks and centre marked
    (the paper's Fig. 3 layout)."""
    n = max(1, len(shown))
    fig, axes = plt.subplots(n, 3, figsize=(9, 2.6 * n), squeeze=False)
    for row, s in zip(axes, shown, strict=False):
        axial_row(row, s.subtraction, s.cam, s.coam, 0, s.marks)
        for ax, name in zip(row, (s.title, "CAM", "COAM"), strict=True):
            ax.set_title(f"{name}, slice k={s.k}" if ax is not row[0] else name, fontsize=8)
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
