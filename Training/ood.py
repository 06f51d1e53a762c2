"""Evidence for the training-domain check: out-of-distribution inputs made from the test split's case folders and
how well the model file's record tells them from the test cases themselves.

Each test case is analyzed as given (its in-domain rate) and as each of :data:`KINDS` (the mistakes and protocol
differences a site meets), through the analysis's own path (:func:`~BreastCMSLLib.pipeline.preprocess.prepare`,
one forward pass, :func:`~BreastCMSLLib.network.domain.applicability`). Per kind: the AUROC of the score (test
cases negative, the made inputs positive; an input that preprocessing refuses counts as detected, with a score
above every other), of each of its two parts alone (the feature distance, the input-pattern distance, each as a
multiple of its threshold), and the fraction flagged (outside the envelope or a threshold, or refused).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from sklearn.metrics import roc_auc_score

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.domain import applicability
from BreastCMSLLib.network.header import read_model_domain
from BreastCMSLLib.network.modelfile import LoadedModel, load_model
from BreastCMSLLib.pipeline.analyze import forward
from BreastCMSLLib.pipeline.preprocess import CaseInputs, load_case, prepare

from .runfiles import read_domain, run_model_path

KINDS = {
    "shuffled": "post-contrast phases shuffled in time",
    "t1_as_post": "the T1 given as the first post-contrast phase",
    "repeated": "one post-contrast phase given twice (the second as the first)",
    "noise": "noise volumes (each volume's mean and spread)",
    "one_breast": "one breast cut away (the left half of every volume)",
    "spacing_doubled": "voxel spacing doubled (2 x 2 x 2 voxels averaged)",
    "motion": "the third post-contrast phase shifted 10 mm (motion)",
}
SHIFT_MM = 10.0


def _posts(inputs: CaseInputs) -> list[sitk.Image]:
    return inputs.series[1:] if inputs.kind == "phases" else list(inputs.series)


def _with_posts(inputs: CaseInputs, posts: list[sitk.Image], t1: sitk.Image | None = None) -> CaseInputs:
    series = [inputs.series[0], *posts] if inputs.kind == "phases" else posts
    return dataclasses.replace(inputs, series=series, t1=inputs.t1 if t1 is None else t1)


def _every(inputs: CaseInputs, change) -> CaseInputs:
    return dataclasses.replace(inputs, t1=None if inputs.t1 is None else change(inputs.t1),
                               series=[change(s) for s in inputs.series])


def _noise(image: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    a = sitk.GetArrayViewFromImage(image)
    out = sitk.GetImageFromArray(rng.normal(float(a.mean()), float(a.std()), a.shape).astype(np.float32))
    out.CopyInformation(image)
    return out


def _left_half(image: sitk.Image) -> sitk.Image:
    axis = int(np.argmax(np.abs(np.reshape(image.GetDirection(), (3, 3))[0])))  # index axis along L-R
    size = list(image.GetSize())
    size[axis] //= 2
    return sitk.RegionOfInterest(image, size, [0, 0, 0])


def _shifted(image: sitk.Image) -> sitk.Image:
    out = sitk.Image(image)
    out.SetOrigin(tuple(np.add(image.GetOrigin(), (0.0, SHIFT_MM, 0.0))))
    return out


def variant(kind: str, inputs: CaseInputs, rng: np.random.Generator) -> CaseInputs | None:
    """``inputs`` made into the out-of-distribution input ``kind`` (None where the case cannot give it)."""
    posts = _posts(inputs)
    if kind == "shuffled":
        if len(posts) < 2:
            return None
        order = np.arange(len(posts))
        while np.array_equal(order, np.arange(len(posts))):
            order = rng.permutation(len(posts))
        return _with_posts(inputs, [posts[k] for k in order])
    if kind == "t1_as_post":
        return None if inputs.t1 is None else _with_posts(inputs, [inputs.t1, *posts[1:]])
    if kind == "repeated":
        return None if len(posts) < 2 else _with_posts(inputs, [posts[0], posts[0], *posts[2:]])
    if kind == "noise":
        return _every(inputs, lambda image: _noise(image, rng))
    if kind == "one_breast":
        return _every(inputs, _left_half)
    if kind == "spacing_doubled":
        return _every(inputs, lambda image: sitk.BinShrink(image, [2, 2, 2]))
    if kind == "motion":
        k = min(2, len(posts) - 1)
        return _with_posts(inputs, [_shifted(p) if n == k else p for n, p in enumerate(posts)])
    raise ValueError(f"unknown kind {kind!r}")


def check_case(loaded: LoadedModel, inputs: CaseInputs, device: torch.device) -> dict:
    """The applicability of one input through the analysis's path; ``refused`` with the reason when preprocessing
    refuses it."""
    try:
        prep = prepare(inputs, loaded.config, loaded.name)
    except InputError as err:
        return {"in_domain": False, "score": math.inf, "feature": math.inf, "pattern": math.inf, "refused": str(err)}
    out, _ = forward(loaded, prep.array, device)
    app = applicability(loaded.domain.check(out.pooled[0].float().cpu().numpy()), prep.study)
    return {**app, "feature": app["feature_distance"] / app["feature_threshold"],
            "pattern": app["pattern_distance"] / app["pattern_threshold"], "refused": None}


def auroc(inside: list[float], outside: list[float]) -> float:
    """AUROC of the score separating ``outside`` (positive) from ``inside``; infinite scores rank above all."""
    scores = np.array([*inside, *outside], dtype=float)
    finite = scores[np.isfinite(scores)]
    top = (finite.max() if finite.size else 1.0) * 10 + 1
    scores[~np.isfinite(scores)] = top
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(labels, scores)) if len(inside) and len(outside) else math.nan


def ood_study(loaded: LoadedModel, case_dirs: list[Path], device: torch.device, seed: int = 0) -> dict:
    """The test split's in-domain rate and, per kind and over all, the AUROC and the fraction flagged."""
    rng = np.random.default_rng(seed)
    base, made = [], {kind: [] for kind in KINDS}
    for folder in case_dirs:
        inputs = load_case(folder)
        base.append(check_case(loaded, inputs, device))
        for kind in KINDS:
            if (changed := variant(kind, inputs, rng)) is not None:
                made[kind].append(check_case(loaded, changed, device))

    def summary(rows: list[dict]) -> dict:
        return {"n": len(rows), **{name: auroc([r[key] for r in base], [r[key] for r in rows]) for name, key in
                                   (("auroc", "score"), ("auroc_feature", "feature"), ("auroc_pattern", "pattern"))},
                "flagged": float(np.mean([r["in_domain"] is False for r in rows])) if rows else math.nan,
                "refused": sum(r["refused"] is not None for r in rows)}

    per_kind = {kind: summary(rows) for kind, rows in made.items()}
    return {"n_test": len(base), "in_domain_rate": float(np.mean([r["in_domain"] is True for r in base])),
            "feature_inside_rate": float(np.mean([r["feature"] <= 1.0 for r in base])),
            "pattern_inside_rate": float(np.mean([r["pattern"] <= 1.0 for r in base])),
            "threshold": loaded.domain.density.threshold, "pattern_threshold": loaded.domain.pattern.threshold,
            "kinds": per_kind,
            "overall": summary([r for rows in made.values() for r in rows]),
            "test_reasons": sorted({reason for r in base if r["in_domain"] is False for reason in r["reasons"]})}


def ood_table(result: dict) -> str:
    """The markdown table of :func:`ood_study`."""
    rows = ["| input | n | AUROC of the score | feature distance alone | input pattern alone | flagged outside | "
            "refused by preprocessing |", "|---|---|---|---|---|---|---|"]
    for kind, r in [*result["kinds"].items(), ("all", result["overall"])]:
        name, bold = (KINDS[kind], "") if kind != "all" else ("**all kinds**", "**")
        rows.append(f"| {name} | {r['n']} | {bold}{r['auroc']:.3f}{bold} | {r['auroc_feature']:.3f} | "
                    f"{r['auroc_pattern']:.3f} | {r['flagged']:.2f} | {r['refused']} |")
    return (f"Test split: {result['n_test']} cases, {result['in_domain_rate']:.0%} in domain "
            f"({result['feature_inside_rate']:.0%} inside the feature threshold {result['threshold']:.3g}, "
            f"{result['pattern_inside_rate']:.0%} inside the input-pattern threshold "
            f"{result['pattern_threshold']:.3g}).\n\n"
            + "\n".join(rows) + "\n")


def evaluate_applicability(run_dir: str | Path, cases, device: torch.device | str, seed: int = 0) -> dict | None:
    """``evaluate``'s part: :func:`ood_study` of the run's best model with the run's record (``domain.json``, else
    the model file's) on ``cases`` (the split's, with their case folders), written to ``RUN/eval/applicability.md``
    and ``.json``; None when there is no record."""
    path = run_model_path(run_dir)
    record = read_domain(run_dir) or read_model_domain(path)[0]  # the run's measured record, else the model file's
    if record is None:  # also every network without a pooled 3D feature (the 2D MIL baseline)
        return None
    loaded = load_model(path, device)
    loaded.domain = record
    result = ood_study(loaded, [Path(c.case_dir) for c in cases], torch.device(device), seed)
    out = Path(run_dir) / "eval"
    atomic_write_text(out / "applicability.json", json.dumps(result, indent=1))
    atomic_write_text(out / "applicability.md", ood_table(result))
    return result
