"""Maps scored against an expert lesion mask (MAMA-MIA's segmentations, Duke's boxes): per map, whether its peak
lies inside the mask, whether it lies within 5 mm of it, the distance from the peak to the mask's centroid, and
the share of the map's top 1 % (input-grid voxels inside the reference volume) that lies inside the mask; and
over a cohort, each measure's mean with a 95 % percentile-bootstrap CI (cases resampled, seeded), for the true
positives (malignant, called malignant) and for all malignant units.

Frames: peaks and centroids in LPS mm; the mask is resampled (nearest voxel) onto the network's input grid,
where the maps are made; "within 5 mm" is the peak inside the mask dilated by 5 mm on the mask's own grid
(:func:`Training.lesiontruth.dilated`). The maps: the paper's COAM and CAM and the fine map, as
``breastcmsl analyze`` gives them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from BreastCMSLLib.pipeline.maps import Analysis

from .breasts import mask_centroid
from .lesiontruth import dilated, inside, lesion_mask, on_input_grid, top_share

MAPS = ("coam", "cam", "fine")
MEASURES = ("inside", "within_5mm", "centroid_mm", "top1_share")
N_BOOT = 2000


@dataclass(frozen=True)
class MaskScore:
    """One map on one case against its lesion mask (see the module)."""

    inside: bool
    within_5mm: bool
    centroid_mm: float
    top1_share: float


def _maps(a: Analysis) -> dict[str, tuple[np.ndarray, tuple]]:
    maps = {"coam": (a.coam_input, a.coam_peak_lps), "cam": (a.cam_input, a.cam_peak_lps)}
    if getattr(a, "fine_input", None) is not None:
        maps["fine"] = (a.fine_input, a.fine_peak_lps)
    return maps


def mask_scores(a: Analysis, case_dir: str | Path) -> dict[str, MaskScore] | None:
    """Each map of an analyzed case against the case's ``truth/lesion_mask`` (None: the case has none, or it is
    empty)."""
    mask = lesion_mask(case_dir)
    centroid = mask_centroid(mask) if mask is not None else None
    if centroid is None:
        return None
    near = dilated(mask)
    region = on_input_grid(mask, a.prep)
    valid = None if a.prep.valid.all() else a.prep.valid
    scores = {}
    for name, (values, peak) in _maps(a).items():
        share = top_share(values, region, valid) if region.any() else 0.0
        scores[name] = MaskScore(inside(mask, peak), inside(near, peak),
                                 float(np.linalg.norm(np.subtract(peak, centroid))), share)
    return scores


def mean_ci(values, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Mean of ``values`` and its 95 % percentile-bootstrap CI (by hand: a mean over resampled cases is one
    line of numpy), with n; NaN for no values."""
    x = np.asarray(values, dtype=float)
    if not x.size:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    boots = x[np.random.default_rng(seed).integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(x.size)}


def mask_table(records: list[tuple[int, bool, dict[str, MaskScore]]], n_boot: int = N_BOOT) -> dict:
    """``records``: (label, called malignant, scores) per case with a mask. Returns {group: {map: {measure:
    :func:`mean_ci`}}} for ``true_positive`` and ``malignant``."""
    groups = {"true_positive": [s for label, called, s in records if label == 1 and called],
              "malignant": [s for label, _, s in records if label == 1]}
    table = {}
    for group, scores in groups.items():
        table[group] = {m: {measure: mean_ci([float(asdict(s[m])[measure]) for s in scores if m in s], n_boot)
                            for measure in MEASURES} for m in MAPS}
    return table


def table_text(table: dict) -> str:
    """Markdown of :func:`mask_table`: one row per group and map, each measure as ``mean [low, high]``."""
    lines = ["| units | map | n | peak inside | peak within 5 mm | to centroid (mm) | top 1 % inside |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for group, maps in table.items():
        for name, measures in maps.items():
            cells = [f"{v['mean']:.3g} [{v['ci_low']:.3g}, {v['ci_high']:.3g}]" for v in measures.values()]
            lines.append(f"| {group.replace('_', ' ')} | {name} | {measures['inside']['n']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
