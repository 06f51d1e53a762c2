"""``breastcmsl-train localization-study``: localization of COAM, CAM and the fine map's candidates.

A phantom cohort at about the paper's voxel size (1.1 mm) whose lesions are spread over both breasts
(position, size and kinetics varied: :data:`BreastCMSLLib.phantom.parameters.LESION_PLACEMENTS` "spread"), the
core's preprocessing at the paper's input size (340 x 220 x 128: an 11 x 7 x 4 feature grid of
35.2 mm cells), CMSL fitted, and for the test cases the model calls malignant (as the paper's 85) the
distance from the annotated lesion centre to each map's peak (:func:`Training.localize.localize_cases`,
i.e. ``breastcmsl analyze``'s own peaks). Paired difference COAM - CAM with a 95 % percentile
bootstrap CI (``scipy.stats.bootstrap``) and the Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``).
The floor is the mean distance from the lesion centres to the nearest feature centre: the best any
map whose peak sits on a feature centre can do.

Every map and peak rule of :func:`Training.localize.candidate_names` (the paper's COAM and CAM, Eq. 5 on
layer3/layer2, gated or not by layer4's COAM, node/quadratic/centroid peaks) and the two reference rows are
scored on the test split's true positives (malignant, called malignant): centre distance with a 95 %
percentile bootstrap CI of its mean, Wilcoxon signed-rank p against COAM and against CAM on the same
cases, pointing game (peak in the lesion mask dilated by 5 mm) with a bootstrap CI, and the mean top-1 %
share in that mask (:mod:`Training.lesiontruth`). The same scores on the validation split's true
positives name the fine-map candidate with the smallest mean distance (the measurement the Lib's default
:data:`BreastCMSLLib.config.FINE_MAP` was chosen by).

Writes ``OUT/summary.json``, ``OUT/localization.md``, ``OUT/cases.csv`` (every test case with a lesion,
called malignant or not), ``OUT/evidence.csv`` (what the maps are built from, per case called malignant:
:mod:`Training.mapevidence`) and ``OUT/montage.png`` (the paper's Fig. 3 layout); ``OUT/cohort``,
``OUT/cache`` and ``OUT/run`` hold the intermediate stages. A rerun keeps the finished cases, cache
entries and a finished fit of the same options, and redoes evaluation, localization and the report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.cohort.manifest import assign_splits, read_manifest, write_manifest
from BreastCMSLLib.config import NETWORK_STRIDE, PreprocessConfig
from BreastCMSLLib.errors import InputError

from .cache import preprocess_cohort
from .cohort import synth_cohort
from .evaluate import evaluate
from .localize import (
    CANDIDATE_MAPS,
    GRADIENT_MAPS,
    CaseLocalization,
    candidate_names,
    feature_grid,
    fine_name,
    localize_cases,
    summarize,
    write_cases_csv,
    write_montage,
)
from .mapevidence import FIELDS, case_evidence
from .runfiles import run_files
from .stages import Stages
from .studyreport import report
from .trainer import FitConfig, fit


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of the study. Lengths in mm, sizes in voxels (i, j, k)."""

    n_cases: int = 110
    epochs: int = 5
    input_size: tuple[int, int, int] = (340, 220, 128)
    spacing_mm: tuple[float, float, float] = (1.1, 1.1, 1.1)  # phantom voxels (the paper's 1.1 mm)
    width_factor: float = 0.125
    batch_size: int = 2
    lr: float = 3e-4
    difficulty: float = 0.25
    proportions: tuple[int, int, int] = (60, 10, 30)  # train / val / test (a larger test share than the paper's)
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    n_boot: int = 10_000

    def __post_init__(self) -> None:
        if self.n_cases < 10:
            raise InputError("--n", f"needs at least 10 cases (train, val, test of both classes), got {self.n_cases}")
        if self.epochs < 1:
            raise InputError("--epochs", f"must be at least 1, got {self.epochs}")
        if self.width_factor <= 0 or int(64 * self.width_factor) < 1:
            raise InputError("--width-factor", f"must be >= 1/64 (one conv1 channel), got {self.width_factor}")
        try:
            PreprocessConfig(input_size=tuple(self.input_size))
        except ValueError as err:
            raise InputError("--input-size", str(err)) from None
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise InputError("--spacing", f"expected three positive lengths (mm), got {self.spacing_mm}")


def paired_difference(coam_mm: list[float], cam_mm: list[float], n_boot: int, seed: int) -> tuple[dict, float]:
    """Mean of COAM - CAM (mm) with its 95 % percentile bootstrap CI, and the Wilcoxon signed-rank p-value
    (two-sided); NaN where there are too few cases (CI: < 2, Wilcoxon: all differences zero or none)."""
    d = np.subtract(coam_mm, cam_mm)
    diff = {"mean": float(d.mean()) if d.size else math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if d.size >= 2 and np.ptp(d) > 0:
        ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=n_boot, method="percentile",
                             random_state=np.random.default_rng(seed)).confidence_interval
        diff.update(ci_low=float(ci.low), ci_high=float(ci.high))
    elif d.size >= 2:
        diff.update(ci_low=diff["mean"], ci_high=diff["mean"])
    p = float(stats.wilcoxon(coam_mm, cam_mm).pvalue) if np.any(d != 0) else math.nan
    return diff, p


def mean_ci(values: list[float], n_boot: int, seed: int) -> tuple[float, float]:
    """95 % percentile bootstrap CI of the mean (``scipy.stats.bootstrap``); the mean twice when the values
    do not vary, NaN for fewer than 2."""
    a = np.asarray(values, dtype=float)
    if a.size < 2:
        return math.nan, math.nan
    if np.ptp(a) == 0:
        return float(a[0]), float(a[0])
    ci = stats.bootstrap((a,), np.mean, confidence_level=0.95, n_resamples=n_boot, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def wilcoxon_p(a: list[float], b: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired values; NaN when every difference is zero (or none)."""
    return float(stats.wilcoxon(a, b).pvalue) if np.any(np.subtract(a, b) != 0) else math.nan


def map_rows(cases: list[CaseLocalization], n_boot: int, seed: int) -> dict[str, dict]:
    """Per candidate and reference row over ``cases``: distance summary and CI, paired Wilcoxon p against the
    paper's COAM (``coam/node``) and CAM (``cam/node``), pointing game (share, CI, hits of cases with a mask)
    and the mean top-1 % share."""
    rows = {}
    coam_mm = [r.scores["coam/node"].distance_mm for r in cases]
    cam_mm = [r.scores["cam/node"].distance_mm for r in cases]
    for name in candidate_names():
        scores = [r.scores[name] for r in cases]
        mm = [s.distance_mm for s in scores]
        hits = [float(s.pointing) for s in scores if s.pointing is not None]
        shares = [s.top_share for s in scores if s.top_share is not None]
        low, high = mean_ci(mm, n_boot, seed)
        hit_low, hit_high = mean_ci(hits, n_boot, seed)
        rows[name] = {"mm": summarize(mm), "mm_ci": [low, high], "wilcoxon_p_vs_coam": wilcoxon_p(mm, coam_mm),
                      "wilcoxon_p_vs_cam": wilcoxon_p(mm, cam_mm),
                      "pointing": float(np.mean(hits)) if hits else math.nan, "pointing_ci": [hit_low, hit_high],
                      "hits": int(sum(hits)), "with_mask": len(hits),
                      "top1_share": float(np.mean(shares)) if shares else math.nan}
    return rows


def fine_candidates() -> list[str]:
    """The candidates finer than layer4's grid: the fine map's (gradient-free) and LayerCAM's."""
    return [n for n in candidate_names() if n.split("/")[0] in CANDIDATE_MAPS[2:]]


def validation_choice(val_tp: list[CaseLocalization]) -> dict:
    """Mean distance and pointing game of each fine candidate on the validation true positives; ``best``: the
    gradient-free one with the smallest mean distance (ties: more hits, then the order of the candidates),
    ``best_any``: the same over LayerCAM's too."""
    rows = {n: {"mean_mm": float(np.mean([r.scores[n].distance_mm for r in val_tp])) if val_tp else math.nan,
                "hits": int(sum(bool(r.scores[n].pointing) for r in val_tp))} for n in fine_candidates()}

    def best(names: list[str]) -> str | None:
        ranked = sorted(names, key=lambda n: (rows[n]["mean_mm"] if math.isfinite(rows[n]["mean_mm"]) else math.inf,
                                              -rows[n]["hits"]))
        return ranked[0] if val_tp else None

    free = [n for n in rows if n.split("/")[0] not in GRADIENT_MAPS]
    return {"n": len(val_tp), "candidates": rows, "best": best(free), "best_any": best(list(rows)),
            "default": fine_name()}


def true_positives(results: list[CaseLocalization]) -> list[CaseLocalization]:
    """The malignant cases the model calls malignant."""
    return [r for r in results if r.called_malignant and r.label == 1]


def study_summary(cfg: StudyConfig, called: list[CaseLocalization], validation: dict | None = None) -> dict:
    """The summary.json dict of the cases called malignant (``maps``: on the true positives among them)."""
    coam_mm, cam_mm = [r.coam_mm for r in called], [r.cam_mm for r in called]
    diff, p = paired_difference(coam_mm, cam_mm, cfg.n_boot, cfg.seed)
    return {"coam_mm": summarize(coam_mm), "cam_mm": summarize(cam_mm), "difference_mm": diff, "wilcoxon_p": p,
            "fine_map": fine_name(), "maps": map_rows(true_positives(called), cfg.n_boot, cfg.seed),
            "validation": validation,
            "feature_grid": list(feature_grid(cfg.input_size)),
            "feature_spacing_mm": [NETWORK_STRIDE * s for s in cfg.spacing_mm],  # preprocessing keeps the spacing
            "floor_mm": float(np.mean([r.floor_mm for r in called])) if called else math.nan,
            "config": dataclasses.asdict(cfg)}


def _json(value) -> str:
    """JSON with NaN written as null (strict JSON)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(value), indent=1)


def run_study(out: str | Path, cfg: StudyConfig = StudyConfig()) -> dict:
    """Run the study into ``out``; returns the summary (also ``out/summary.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Stages("study")

    stage("synth", synth_cohort, out / "cohort", cfg.n_cases, seed=cfg.seed, spacing=cfg.spacing_mm,
          difficulty=cfg.difficulty, workers=cfg.workers, lesion_placement="spread")
    cases = [dataclasses.replace(c, split="") for c in read_manifest(out / "cohort" / "manifest.csv")]
    manifest = out / "cohort" / "study_manifest.csv"
    write_manifest(manifest, assign_splits(cases, cfg.seed, cfg.proportions))
    prep = stage("preprocess", preprocess_cohort, manifest, out / "cache",
                 PreprocessConfig(input_size=tuple(cfg.input_size)), workers=cfg.workers, seed=cfg.seed)
    run = out / "run"
    fit_cfg = FitConfig(cache=str(out / "cache"), out=str(run), method="cmsl", epochs=cfg.epochs,
                        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=cfg.device,
                        width_factor=cfg.width_factor)
    if _fitted(fit_cfg):
        print("[study] fit: kept (a finished run of the same options)", flush=True)
    else:
        if run.exists():
            shutil.rmtree(run)
        stage("fit", fit, fit_cfg)
    metrics = stage("evaluate", evaluate, run, "test", device=cfg.device)
    evidence: list[dict] = []

    def collect(r: CaseLocalization, a, loaded) -> None:
        evidence.append(case_evidence(r.subject_id, loaded, a, r.centre_cell, cfg.device))

    results, shown = stage("localize", localize_cases, run, "test", device=cfg.device, only_called=False,
                           on_case=collect)
    val_results, _ = stage("validate", localize_cases, run, "val", device=cfg.device, montage_cases=0)
    validation = validation_choice(true_positives(val_results))
    called = [r for r in results if r.called_malignant]
    called_ids = {r.subject_id for r in called}
    evidence = [e for e in evidence if e["subject_id"] in called_ids]
    summary = study_summary(cfg, called, validation)
    seconds = stage.total()
    everything = study_summary(cfg, results)
    write_cases_csv(out / "cases.csv", results)
    _write_evidence(out / "evidence.csv", evidence)
    write_montage(out / "montage.png", shown)
    atomic_write_text(out / "summary.json", _json(summary))
    atomic_write_text(out / "localization.md", report(summary, everything, results, metrics, seconds,
                                                       len(prep.failed), evidence))
    return summary


def _fitted(fit_cfg: FitConfig) -> bool:
    """True when ``fit_cfg.out`` holds a finished run of exactly these options (a rerun keeps it)."""
    files = run_files(fit_cfg.out)
    if not (files["run"].is_file() and files["last"].is_file() and files["best"].is_file()):
        return False
    return json.loads(files["run"].read_text())["fit"] == json.loads(json.dumps(dataclasses.asdict(fit_cfg)))


def _write_evidence(path: Path, rows: list[dict]) -> None:
    """The per-case evidence (:mod:`Training.mapevidence`) as CSV."""
    lines = [",".join(FIELDS)] + [",".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in FIELDS)
                                  for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
