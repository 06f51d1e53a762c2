"""The Markdown report of ``breastcmsl-train localization-study`` (:mod:`Training.study`): set-up, COAM against CAM
beside the paper's figures, what the maps are built from, and every map against the lesion truth."""

from __future__ import annotations

import math
import os
import platform
from types import SimpleNamespace

import numpy as np
import torch

from .localize import REFERENCES, CaseLocalization

PAPER = {"coam_mm": (18.26, 13.65), "cam_mm": (39.84, 8.82), "n": 85}  # Luo et al. 2019, Sec. 3


def machine() -> str:
    """One line describing where the study ran."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def _mm(d: dict) -> str:
    return f"{d['mean']:.1f} ± {d['std']:.1f} (median {d['median']:.1f})" if d["n"] else "n/a"


def _share(results: list[CaseLocalization], test) -> str:
    n = sum(1 for r in results if test(r))
    return f"{n}/{len(results)}" if results else "n/a"


def report(summary: dict, everything: dict, results: list[CaseLocalization], metrics: dict, seconds: dict,
           n_failed: int, evidence: list[dict]) -> str:
    """The Markdown report of the study (``OUT/localization.md``): ``summary`` of the test cases called malignant
    (its ``config``: the study's options), ``everything`` of all test cases, the evaluation ``metrics``, the stages'
    wall ``seconds``, the number of cases that failed preprocessing and the per-case ``evidence``."""
    cfg = SimpleNamespace(**summary["config"])
    grid, cell = summary["feature_grid"], summary["feature_spacing_mm"]
    called = [r for r in results if r.called_malignant]
    last = np.array(grid) - 1

    def edge(c) -> bool:
        return bool(np.any(np.array(c) == 0) or np.any(np.array(c) == last))

    d = summary["difference_mm"]
    auc = metrics["metrics"]["auc"]
    lines = [
        "# COAM vs CAM localization at the paper's feature grid", "",
        "Produced by `breastcmsl-train localization-study` (synthetic phantoms, no patient data).", "",
        "## Set-up", "",
        f"- cohort: {cfg.n_cases} phantom cases at {cfg.spacing_mm[0]}×{cfg.spacing_mm[1]}×{cfg.spacing_mm[2]} mm, "
        f"half malignant, difficulty {cfg.difficulty}, lesions spread over both breasts; split "
        f"train/val/test {'/'.join(str(p) for p in cfg.proportions)} %, test: {metrics['n']} cases "
        f"({metrics['n_malignant']} malignant); failed preprocessing: {n_failed}",
        f"- network input {'×'.join(str(v) for v in cfg.input_size)} (the paper's: 340×220×128), ResNet34-3D width "
        f"factor "
        f"{cfg.width_factor}, CMSL, Adam lr {cfg.lr}, batch {cfg.batch_size}, ≤ {cfg.epochs} epochs, seed {cfg.seed}",
        f"- final feature grid {'×'.join(str(v) for v in grid)}, cells of "
        f"{'×'.join(f'{v:.1f}' for v in cell)} mm; the maps are resampled linearly from it onto the input grid",
        f"- test AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]",
        f"- machine: {machine()}; wall time {seconds['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items() if k != 'total')})", "",
        "## Result (test cases the model calls malignant)", "",
        "| | COAM (mm) | CAM (mm) | n |", "|---|---|---|---|",
        f"| this study | {_mm(summary['coam_mm'])} | {_mm(summary['cam_mm'])} | {summary['coam_mm']['n']} |",
        f"| all test cases (any call) | {_mm(everything['coam_mm'])} | {_mm(everything['cam_mm'])} | "
        f"{everything['coam_mm']['n']} |",
        f"| paper (Luo et al. 2019) | {PAPER['coam_mm'][0]} ± {PAPER['coam_mm'][1]} | {PAPER['cam_mm'][0]} ± "
        f"{PAPER['cam_mm'][1]} | {PAPER['n']} |", "",
        f"- paired difference COAM − CAM: {d['mean']:.1f} mm, 95 % bootstrap CI [{d['ci_low']:.1f}, "
        f"{d['ci_high']:.1f}]; Wilcoxon signed-rank p = {summary['wilcoxon_p']:.3g}",
        f"- quantization floor (centre to nearest feature centre): {summary['floor_mm']:.1f} mm",
        f"- peak in the lesion's own feature cell: COAM {_share(called, lambda r: r.coam_cell == r.centre_cell)}, "
        f"CAM {_share(called, lambda r: r.cam_cell == r.centre_cell)}",
        f"- peak on the outer layer of the feature grid: COAM {_share(called, lambda r: edge(r.coam_cell))}, "
        f"CAM {_share(called, lambda r: edge(r.cam_cell))} (lesion centres there: "
        f"{_share(called, lambda r: edge(r.centre_cell))})", "",
        "## What the maps are built from", "",
        "- COAM (Eq. 5): M_i = Σ_j x_i·x_j over the layer4 output x, taken after the block's final ReLU, so "
        "every x_i ≥ 0 and every Gram entry is ≥ 0: M_i = x_i·(Σ_j x_j), the projection of each position on the "
        "summed feature vector, high where a position is strongly active in the channels active everywhere",
        "- CAM: the 1×1×1 head's logit w·x_i + b per position (the direction the classifier reads)",
        "- both live on the feature grid above and are resampled linearly onto the input grid; a plateau of "
        "maxima resolves to the plateau voxel nearest its centroid (BreastCMSLLib/pipeline/peaks.py)",
        *_evidence_lines(evidence), "",
        *_map_lines(summary), "",
        "![montage](montage.png)", "",
    ]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f} %"


def _p(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.2g}"


def _map_lines(summary: dict) -> list[str]:
    """The table of every map and reference row on the test true positives, and the validation choice."""
    rows, fine = summary["maps"], summary["fine_map"]
    n = rows["coam/node"]["mm"]["n"]
    lines = ["## Every map against the lesion truth (test true positives)", "",
             f"{n} malignant test cases called malignant. Distance: peak to lesion centre, mean ± sd (median) and "
             "the 95 % bootstrap CI of the mean; pointing game: peak inside the lesion mask dilated by 5 mm "
             "(95 % bootstrap CI); top 1 %: share of the map's top 1 % input-grid voxels inside that mask; "
             "p: Wilcoxon signed-rank against the paper's COAM and CAM on the same cases. MAP/RULE: the map "
             "(coam, cam: layer4; coam_layerN: Eq. 5 on layerN; gated_layerN: that times layer4's COAM; "
             "layercam_layerN: LayerCAM of layerN, gradient-based) and its "
             "peak (node: the input-grid maximum, as `analyze` gives COAM and CAM; quadratic, centroid: "
             "sub-cell estimates on the map's own grid).", "",
             "| map / peak | distance (mm) | 95 % CI | pointing game | top 1 % in mask | p vs COAM | p vs CAM |",
             "|---|---|---|---|---|---|---|"]
    titles = {"coam/node": "coam/node (the paper's COAM)", "cam/node": "cam/node (the paper's CAM)",
              fine: f"**{fine} (fine, the default)**"}
    for name, r in rows.items():
        title = titles.get(name, name if name not in REFERENCES else f"reference: {name}")
        hits = f"{r['hits']}/{r['with_mask']} ({_pct(r['pointing'])}, [{_pct(r['pointing_ci'][0])}, " \
               f"{_pct(r['pointing_ci'][1])}])" if r["with_mask"] else "n/a"
        top = _pct(r["top1_share"])
        ci = f"[{r['mm_ci'][0]:.1f}, {r['mm_ci'][1]:.1f}]" if r["mm"]["n"] > 1 else "n/a"
        lines.append(f"| {title} | {_mm(r['mm'])} | {ci} | {hits} | {top} | "
                     f"{_p(r['wilcoxon_p_vs_coam'])} | {_p(r['wilcoxon_p_vs_cam'])} |")
    f = rows[fine]
    lines += ["", f"- the fine map ({fine}): mean distance {f['mm']['mean']:.1f} mm, pointing game "
              f"{_pct(f['pointing'])}"]
    v = summary.get("validation")
    if v:
        best = v["best"]
        lines.append(f"- validation split ({v['n']} true positives): the fine-map candidate with the smallest mean "
                     f"distance is {best} ({v['candidates'][best]['mean_mm']:.1f} mm)" if best else
                     "- validation split: no true positive, no choice measured")
        if v["best_any"] and v["best_any"] != best:
            lines.append(f"- with the gradient-based LayerCAM included it would be {v['best_any']} "
                         f"({v['candidates'][v['best_any']]['mean_mm']:.1f} mm)")
        lines.append(f"- the Lib's default fine map (BreastCMSLLib.config.FINE_MAP): {v['default']}")
    return lines


def _evidence_lines(evidence: list[dict]) -> list[str]:
    """Medians of the per-case evidence (Training/mapevidence.py) of the cases called malignant."""
    if not evidence:
        return ["- no case called malignant: no per-case evidence"]

    def med(key: str) -> float:
        return float(np.nanmedian([e[key] for e in evidence]))

    def top(key: str) -> str:
        return f"{sum(e[key] == 1 for e in evidence)}/{len(evidence)}"

    return [
        f"- on the feature grid ({evidence[0]['cells']} cells), rank of the lesion's cell (1 = the map's maximum), "
        f"median over the {len(evidence)} cases called malignant [cases where it is the maximum]: "
        f"COAM {med('rank_coam'):.0f} [{top('rank_coam')}], CAM {med('rank_cam'):.0f} [{top('rank_cam')}], "
        f"feature norm |x_i| {med('rank_norm'):.0f} [{top('rank_norm')}], and, as a diagnostic only, COAM of the "
        f"activations before the final ReLU {med('rank_coam_pre_relu'):.0f} [{top('rank_coam_pre_relu')}]",
        f"- median correlation over the cells: COAM with |x_i|² {med('corr_coam_norm2'):.2f}, COAM with CAM "
        f"{med('corr_coam_cam'):.2f}; zero activations after the ReLU: {100 * med('zero_fraction'):.0f} %; "
        f"negative Gram entries before it: {100 * med('pre_relu_negative_gram_fraction'):.0f} % (after: 0 %)",
        "- per case: `evidence.csv`",
    ]
