"""Localization of every map: distance (mm) between the annotated lesion centre and each map's peak, and, where
the case carries a lesion mask, the pointing game and the top-1 % share (:mod:`Training.lesiontruth`).

The maps (:data:`CANDIDATE_MAPS`, all from the one forward pass of ``analyze_case``): the paper's COAM and
CAM on layer4's grid, Eq. 5 on layer3's and layer2's grids, and those gated by layer4's COAM (the fine map's
candidates, :func:`BreastCMSLLib.network.attention.fine_map`) and LayerCAM of layer3 and layer2 (gradient-based,
:mod:`Training.layercam`, study only); each with every peak rule
(:data:`BreastCMSLLib.config.PEAK_RULES`), named ``MAP/RULE``. ``coam/node`` and ``cam/node`` are the paper's
maps with ``breastcmsl analyze``'s own peaks; the Lib's default fine map is :func:`fine_name`. Two
reference rows that are not a method: ``brightest enhancement`` and ``breast centre``.

Where a case carries a lesion mask (an expert segmentation or a box, ``truth/lesion_mask``), every map is
also scored against the mask (:mod:`Training.masktruth`: peak inside it and within 5 mm, distance to its
centroid, top-1 % share inside it, with bootstrap CIs) for the true positives and for all malignant units:
``localize/masks.md`` and the summary's ``masks``. Under ``torchrun`` the cases are shared out among the
processes (case n to rank n mod world size, each on its own GPU), gathered in case order, and rank 0 writes.

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

import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure

from BreastCMSLLib.atomic import atomic_path, atomic_write_text
from BreastCMSLLib.cohort.manifest import read_centers
from BreastCMSLLib.config import FINE_MAP, NETWORK_STRIDE, PEAK_RULES, STAGE_STRIDES, FineMapConfig
from BreastCMSLLib.distributed import Dist, gather_objects
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.header import read_model_metadata
from BreastCMSLLib.network.modelfile import LoadedModel, load_model
from BreastCMSLLib.pipeline.analyze import analyze_case, fine_on_grid
from BreastCMSLLib.pipeline.figures import PanelRow, panel_figure, save_figure
from BreastCMSLLib.pipeline.maps import Analysis, normalized_on_input_grid, stage_peak_lps
from BreastCMSLLib.pipeline.preprocess import load_case

from .evaluate import predict_split
from .layercam import layercam_maps
from .lesiontruth import MapScore, breast_centre, brightest_enhancement, dilated, lesion_mask, on_input_grid, score
from .masktruth import mask_scores, mask_table, table_text
from .methods import MIL2D_ARCH
from .runfiles import run_model_path

MONTAGE_CASES = 6
CSV_COLUMNS = ("subject_id", "label", "probability", "centre_x", "centre_y", "centre_z", "coam_x", "coam_y",
               "coam_z", "cam_x", "cam_y", "cam_z", "coam_mm", "cam_mm", "floor_mm", "fine_x", "fine_y", "fine_z",
               "fine_mm")
CANDIDATE_MAPS = ("coam", "cam", "coam_layer3", "coam_layer2", "gated_layer3", "gated_layer2", "layercam_layer3",
                  "layercam_layer2")
GRADIENT_MAPS = ("layercam_layer3", "layercam_layer2")  # Training/layercam.py: a backward pass, the study only
REFERENCES = ("brightest enhancement", "breast centre")


def fine_name(cfg: FineMapConfig = FINE_MAP) -> str:
    """The ``MAP/RULE`` name of a fine map configuration among the candidates."""
    return f"{'gated' if cfg.gated else 'coam'}_{cfg.stage}/{cfg.peak}"


def candidate_names() -> list[str]:
    """Every ``MAP/RULE`` the study scores, then the reference rows."""
    return [f"{m}/{r}" for m in CANDIDATE_MAPS for r in PEAK_RULES] + list(REFERENCES)


def candidate_maps(a: Analysis) -> dict[str, tuple[np.ndarray, int]]:
    """Each candidate map of an analysis on its feature grid, with its stride (input voxels per voxel); the
    LayerCAM maps must have been added to ``a.grid_maps`` (:func:`Training.layercam.layercam_maps`)."""
    maps = {"coam": (a.grid_maps["coam"], NETWORK_STRIDE), "cam": (a.grid_maps["cam"], NETWORK_STRIDE)}
    for name in CANDIDATE_MAPS[2:]:
        kind, stage = name.split("_")
        small = a.grid_maps[name] if name in GRADIENT_MAPS else fine_on_grid(a.grid_maps,
                                                                              FineMapConfig(stage, kind == "gated"))
        maps[name] = (small, STAGE_STRIDES[stage])
    return maps


def score_case(a: Analysis, centre, case_dir) -> dict[str, MapScore]:
    """Every candidate and reference row of one analyzed case against its lesion centre and (when the case
    has one) its lesion mask dilated by 5 mm."""
    prep = a.prep
    truth = lesion_mask(case_dir)
    mask = dilated(truth) if truth is not None else None
    region = on_input_grid(mask, prep) if mask is not None else None
    valid = None if prep.valid.all() else prep.valid
    scores = {}
    for name, (small, stride) in candidate_maps(a).items():
        on_input = {"coam": a.coam_input, "cam": a.cam_input}.get(name)
        if on_input is None:
            on_input = normalized_on_input_grid(small, prep, stride)
        for rule in PEAK_RULES:
            peak = stage_peak_lps(small, stride, rule, prep, on_input)
            scores[f"{name}/{rule}"] = score(peak, centre, mask, region, on_input, valid)
    peak, values = brightest_enhancement(prep)
    scores["brightest enhancement"] = score(peak, centre, mask, region, values, valid)
    scores["breast centre"] = score(breast_centre(prep), centre, mask)
    return scores


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
    scores: dict  # MAP/RULE or reference row -> :class:`MapScore` (:func:`score_case`)
    mask_scores: dict | None = None  # map -> :class:`Training.masktruth.MaskScore` where the case has a mask

    @property
    def fine_peak(self) -> tuple[float, float, float]:
        return self.scores[fine_name()].peak

    @property
    def fine_mm(self) -> float:
        return self.scores[fine_name()].distance_mm

    @property
    def coam_mm(self) -> float:
        return float(np.linalg.norm(np.subtract(self.coam_peak, self.centre)))

    @property
    def cam_mm(self) -> float:
        return float(np.linalg.norm(np.subtract(self.cam_peak, self.centre)))

    @property
    def called_malignant(self) -> bool:
        return self.probability >= 0.5


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
    :func:`BreastCMSLLib.pipeline.maps.upsample_linear`)."""
    last = np.array(feature_grid(grid.GetSize())) - 1
    cont = np.array(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in point]))
    f = np.clip(np.rint(cont / NETWORK_STRIDE), 0, last).astype(int)
    centre = grid.TransformContinuousIndexToPhysicalPoint((f * NETWORK_STRIDE).astype(float).tolist())
    return tuple(int(v) for v in f), float(np.linalg.norm(np.subtract(centre, point)))


def montage_row(a: Analysis, centre, title: str) -> PanelRow:
    """The panels of one analyzed case through the lesion centre's axial slice, peaks and centre marked."""
    grid = a.prep.input_grid
    marks = {"COAM peak": a.coam_peak_lps, "CAM peak": a.cam_peak_lps, "fine peak": a.fine_peak_lps,
             "true centre": centre}
    marks = {k: np.array(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in p])) for k, p in marks.items()}
    k = int(np.clip(round(marks["true centre"][2]), 0, grid.GetSize()[2] - 1))
    return PanelRow(a.prep.array[0][:, :, k].copy(),
                    {"CAM": a.cam_input[:, :, k].copy(), "COAM": a.coam_input[:, :, k].copy(),
                     "fine": a.fine_input[:, :, k].copy()},
                    [title, *(f"{name}, slice k={k}" for name in ("CAM", "COAM", "fine"))],
                    {label: (m[0], m[1], abs(m[2] - k) <= 1) for label, m in marks.items()})


def localize_cases(run_dir: str | Path, split: str = "test", centers: str | Path | None = None,
                   device: str = "auto", cache_dir: str | None = None, only_called: bool = True,
                   montage_cases: int = MONTAGE_CASES,
                   on_case: Callable[[CaseLocalization, Analysis, LoadedModel], None] | None = None,
                   malignant_too: bool = False) -> tuple[list[CaseLocalization], list[PanelRow]]:
    """Analyze the cases of ``split`` that have a lesion centre (only those the model calls malignant
    when ``only_called``, and with ``malignant_too`` every malignant one as well); returns the per-case
    results and the montage rows of the first called ones (under torchrun: each rank's share, gathered;
    :func:`shard_device`). ``on_case(result, analysis, model)`` is called for each case this process analyzes."""
    run_dir = Path(run_dir)
    model_path = run_model_path(run_dir)
    if read_model_metadata(model_path)[0].arch == MIL2D_ARCH:
        raise InputError(run_dir, "is a 2D MIL run: it has no 3D feature map, so COAM/CAM localization "
                         "(and `breastcmsl analyze`) do not apply to it")
    loaded = load_model(model_path, device="cpu")
    cases, pred, _, _ = predict_split(run_dir, split, cache_dir, device)
    known = read_centers(centers) if centers else {}
    d = Dist.from_env()
    device = shard_device(device, d)
    results, shown = [], []
    for n, (case, p) in enumerate(zip(cases, pred["probability"], strict=True)):
        centre = known.get(case.subject_id, case.center_lps)
        if (only_called and p < 0.5 and not (malignant_too and case.label == 1)) or centre is None:
            continue
        if n % d.world != d.rank:
            continue
        a = analyze_case(load_case(case.case_dir), loaded, device=device)
        a.grid_maps.update(layercam_maps(loaded, a.prep.array, device))
        grid = a.prep.input_grid
        cell, floor = nearest_feature(grid, centre)
        r = CaseLocalization(case.subject_id, case.label, float(p), tuple(float(v) for v in centre),
                             a.coam_peak_lps, a.cam_peak_lps, floor, cell, nearest_feature(grid, a.coam_peak_lps)[0],
                             nearest_feature(grid, a.cam_peak_lps)[0], score_case(a, centre, case.case_dir),
                             mask_scores(a, case.case_dir))
        results.append(r)
        if on_case is not None:
            on_case(r, a, loaded)
        if r.called_malignant and len(shown) < montage_cases:
            shown.append(montage_row(a, centre, f"{r.subject_id}: COAM {r.coam_mm:.1f}, CAM {r.cam_mm:.1f}, "
                                                f"fine {r.fine_mm:.1f} mm"))
    if d.world > 1:
        order = {c.subject_id: n for n, c in enumerate(cases)}
        gathered = gather_objects((results, shown), d)
        results = sorted((r for part, _ in gathered for r in part), key=lambda r: order[r.subject_id])
        shown = [row for _, rows in gathered for row in rows][:montage_cases]
    return results, shown


def shard_device(device: str, d: Dist) -> str:
    """The device this process analyzes on: under torchrun on GPUs its own (``cuda:LOCAL_RANK``)."""
    import torch

    if d.world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{d.local_rank}"
    return device


def write_cases_csv(path: Path, results: list[CaseLocalization]) -> None:
    """One row per case (LPS mm, distances in mm); then, for every candidate and reference row, its distance
    (``NAME mm``), pointing game (``NAME hit``, 1/0, empty without a lesion mask) and top-1 % share
    (``NAME top1``)."""
    def opt(v) -> str:
        return "" if v is None else f"{float(v):.4f}"

    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    names = candidate_names()
    w.writerow([*CSV_COLUMNS, *(f"{n} {m}" for n in names for m in ("mm", "hit", "top1"))])
    for r in results:
        w.writerow([r.subject_id, r.label, f"{r.probability:.6f}", *[f"{v:.3f}" for v in r.centre],
                    *[f"{v:.3f}" for v in r.coam_peak], *[f"{v:.3f}" for v in r.cam_peak],
                    f"{r.coam_mm:.3f}", f"{r.cam_mm:.3f}", f"{r.floor_mm:.3f}",
                    *[f"{v:.3f}" for v in r.fine_peak], f"{r.fine_mm:.3f}",
                    *(x for n in names for x in (f"{r.scores[n].distance_mm:.3f}", opt(r.scores[n].pointing),
                                                 opt(r.scores[n].top_share)))])
    atomic_write_text(path, text.getvalue())


def localize(run_dir: str | Path, split: str = "test", centers: str | Path | None = None, device: str = "auto",
             cache_dir: str | None = None) -> dict:
    """Write ``RUN_DIR/localize/`` (summary.json, cases.csv, montage.png) and return the summary."""
    analyzed, shown = localize_cases(run_dir, split, centers, device, cache_dir, malignant_too=True)
    results = [r for r in analyzed if r.called_malignant]
    masks = mask_table([(r.label, r.called_malignant, r.mask_scores) for r in analyzed if r.mask_scores])
    summary = {"coam_mm": summarize([r.coam_mm for r in results]), "cam_mm": summarize([r.cam_mm for r in results]),
               "fine_mm": summarize([r.fine_mm for r in results]), "fine_map": fine_name(),
               "maps": map_table(results), "split": split, "cases_called_malignant_with_centre": len(results),
               "masks": masks}
    if not Dist.from_env().main:
        return summary
    out = Path(run_dir) / "localize"
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "masks.md", table_text(masks))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    write_cases_csv(out / "cases.csv", results)
    write_montage(out / "montage.png", shown)
    return summary


def map_table(results: list[CaseLocalization], names: list[str] | None = None) -> dict[str, dict]:
    """Per candidate or reference row over ``results``: the distance summary (:func:`summarize`), the
    pointing-game hits and cases with a mask, and the mean top-1 % share."""
    table = {}
    for name in names or candidate_names():
        s = [r.scores[name] for r in results]
        hits = [x.pointing for x in s if x.pointing is not None]
        shares = [x.top_share for x in s if x.top_share is not None]
        table[name] = {"mm": summarize([x.distance_mm for x in s]), "hits": int(sum(hits)), "with_mask": len(hits),
                       "top1_share": float(np.mean(shares)) if shares else math.nan}
    return table


def write_montage(path: Path, shown: list[PanelRow]) -> None:
    """One row per case: subtraction, CAM, COAM and the fine map through the true centre's slice, peaks and
    centre marked (the paper's Fig. 3 layout and the fine map)."""
    if shown:
        fig = panel_figure(shown, "cases called malignant: each map's peak and the true lesion centre")
    else:
        fig = Figure(figsize=(4, 1), dpi=100)
        fig.text(0.5, 0.5, "no case called malignant", ha="center", va="center")
    with atomic_path(path) as tmp:
        save_figure(fig, tmp)
