"""``breastcmsl-train synth``: a phantom cohort (case folders of the core's phantom) and its manifest."""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from BreastCMSLLib.cohort.manifest import Case, write_manifest
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.phantom.parameters import DEFAULT_DIFFICULTY
from BreastCMSLLib.phantom.synth import synth_case


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` of a cohort with seed ``seed``."""
    return seed * 100_003 + index


def _one(folder: str, seed: int, label: int, shape, spacing, difficulty: float, lesion_placement: str) -> dict:
    done = Path(folder) / "case.json"
    if done.is_file():  # written last by the phantom's atomic folder write: the case is complete
        return json.loads(done.read_text())
    return synth_case(folder, seed=seed, label=label, shape=shape, spacing=spacing, difficulty=difficulty,
                      overwrite=True, lesion_placement=lesion_placement)


def synth_cohort(out: str | Path, n: int, seed: int = 0, shape=None, spacing=None, malignant_fraction: float = 0.5,
                 difficulty: float | None = None, workers: int = 1, lesion_placement: str = "tissue") -> dict:
    """Write ``n`` phantom cases under ``out/cases`` and ``out/manifest.csv`` (splits left empty, so the
    seeded stratified split is applied when the manifest is read). Exactly round(n * fraction) cases
    are malignant, in a seeded order. Existing complete case folders are kept (resumable).
    ``lesion_placement``: see :data:`BreastCMSLLib.phantom.parameters.LESION_PLACEMENTS`."""
    if n < 1:
        raise InputError("--n", f"must be at least 1, got {n}")
    if not 0.0 <= malignant_fraction <= 1.0:
        raise InputError("--malignant-fraction", f"must lie in [0, 1], got {malignant_fraction}")
    t0 = time.perf_counter()
    out = Path(out)
    difficulty = DEFAULT_DIFFICULTY if difficulty is None else difficulty
    labels = np.zeros(n, dtype=int)
    labels[: round(n * malignant_fraction)] = 1
    labels = np.random.default_rng(seed).permutation(labels)
    jobs = [(str(out / "cases" / f"case_{i:04d}"), case_seed(seed, i), int(labels[i]),
             None if shape is None else tuple(shape), None if spacing is None else tuple(spacing), difficulty,
             lesion_placement)
            for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            truths = list(pool.map(_one, *zip(*jobs, strict=True)))
    else:
        truths = [_one(*j) for j in jobs]
    cases = [Case(f"case_{i:04d}", int(t["label"]), "", Path(j[0]), t.get("birads"),
                  tuple(t["center_lps"]) if t.get("center_lps") else None)
             for i, (j, t) in enumerate(zip(jobs, truths, strict=True))]
    write_manifest(out / "manifest.csv", cases)
    return {"manifest": str(out / "manifest.csv"), "n": n, "malignant": int(labels.sum()),
            "difficulty": difficulty, "seconds": round(time.perf_counter() - t0, 1)}
