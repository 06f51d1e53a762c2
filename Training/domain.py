"""The training domain of a run (:class:`~BreastCMSLLib.network.domain.DomainRecord`): measured on the run's cache
with its best model and kept in ``RUN/domain.json`` (the record and the sha256 of the model file it belongs to);
``fit`` also writes it into ``model_best.safetensors``, ``export`` into the exported model.

The feature density is Lee et al.'s (NeurIPS 2018): one Gaussian per class over the pooled pre-head feature of the
training split, with one covariance shared by the classes (the class-centred features pooled), here estimated with
scikit-learn's Ledoit-Wolf shrinkage: at the widths trained on a CPU the feature count (128 at width 0.25) exceeds
the training cases, where the plain empirical covariance is singular. Its threshold is set on the validation split
only: the network has seen the training split, whose features lie closer to the means than a new study's.
The input-pattern density is one Gaussian over the training split's standardized input patterns (Ledoit-Wolf);
nothing else was fitted to them, so its threshold is set on the validation cases together with the training cases'
out-of-fold distances (:data:`FOLDS` folds): a few tens of validation cases alone set it too low. Each threshold is
the smallest distance with at least :data:`PART_COVERAGE` of its held-out cases at or below it, so that at least
:data:`COVERAGE` of them lie inside both.
"""


from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf, empirical_covariance, shrunk_covariance
from sklearn.model_selection import KFold

from BreastCMSLLib.distributed import setup
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.domain import COVERAGE, PART_COVERAGE, DomainRecord, Envelope, FeatureDensity

from .cache import Cache, open_cache
from .calibration import UnusableSplitError
from .data import VolumeSource
from .inference import prepare
from .runfiles import read_run, run_files, run_model_path, write_domain
from .runmodel import load_network

MIN_VAL = 10  # validation cases needed to set the threshold
FOLDS = 5  # out-of-fold distances of the training split's input patterns
RIDGE = 1e-9  # added to the covariance's diagonal
SPREAD_FLOOR = 1e-3  # an input-pattern value that varies less over the training split counts as varying this much
__all__ = ["COVERAGE", "PART_COVERAGE", "domain", "fit_density", "fit_domain", "fit_pattern", "measure_domain"]


@torch.no_grad()
def split_features(net: torch.nn.Module, source: VolumeSource, batch_size: int = 4) -> np.ndarray:
    """The pooled pre-head feature (N, D) float64 of every case of ``source``, in its order (bf16 autocast on
    CUDA, as training runs; float32 elsewhere)."""
    net.eval()
    order = list(range(len(source)))
    out = []
    for _, batch in source.batches([order[n:n + batch_size] for n in range(0, len(order), batch_size)]):
        x = prepare(batch, source.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out.append(net(x).pooled.double().cpu().numpy())
    return np.concatenate(out)


def gaussians(x: np.ndarray, label: np.ndarray, shrinkage: float | None = None,
              standardize: bool = False) -> FeatureDensity:
    """Class means of the features ``x`` (N, D) by ``label`` and their shared covariance (Ledoit-Wolf, or
    ``shrinkage`` in [0, 1) towards the scaled identity; 0: the empirical covariance), fitted on the features
    divided by their spread when ``standardize`` (the division folded into the Cholesky factor); threshold unset."""
    x, label = np.asarray(x, np.float64), np.asarray(label).astype(int)
    spread = np.maximum(x.std(0), SPREAD_FLOOR) if standardize else np.ones(x.shape[1])
    z = x / spread
    classes = np.unique(label)
    means = np.stack([z[label == k].mean(0) for k in classes])
    centred = z - means[np.searchsorted(classes, label)]
    if shrinkage is None:
        lw = LedoitWolf(assume_centered=True).fit(centred)
        cov, shrinkage = lw.covariance_, float(lw.shrinkage_)
    else:
        cov = shrunk_covariance(empirical_covariance(centred, assume_centered=True), shrinkage)
    cov = cov + RIDGE * np.eye(len(cov))  # invertible where the training features do not vary
    cholesky = np.linalg.cholesky(np.linalg.inv(cov)) / spread[:, None]
    return FeatureDensity((means * spread).astype(np.float32), cholesky.astype(np.float32), 1.0, len(x), 0,
                          shrinkage, spread.astype(np.float32) if standardize else None)


def with_threshold(density: FeatureDensity, held_out: np.ndarray) -> FeatureDensity:
    """``density`` with the smallest threshold that has :data:`PART_COVERAGE` of the ``held_out`` distances at or
    below it."""
    scores = np.sort(np.asarray(held_out, dtype=float))
    threshold = float(scores[math.ceil(PART_COVERAGE * len(scores)) - 1])
    return dataclasses.replace(density, threshold=threshold, n_held_out=len(scores))


def fit_density(train: np.ndarray, label: np.ndarray, val: np.ndarray,
                shrinkage: float | None = None) -> FeatureDensity:
    """The feature density of the ``train`` features (N, D) by ``label`` (:func:`gaussians`), its threshold from
    the ``val`` features."""
    density = gaussians(train, label, shrinkage)
    return with_threshold(density, density.score(val))


def fit_pattern(train: np.ndarray, val: np.ndarray) -> FeatureDensity:
    """The input-pattern density of the ``train`` patterns (N, D) (:func:`gaussians`, one class, standardized),
    its threshold from the ``val`` patterns' distances and the training patterns' out-of-fold distances."""
    train = np.asarray(train, np.float64)
    one = np.zeros(len(train), int)
    out_of_fold = np.zeros(len(train))
    for fit, held in KFold(min(FOLDS, len(train)), shuffle=True, random_state=0).split(train):
        out_of_fold[held] = gaussians(train[fit], one[fit], standardize=True).score(train[held])
    density = gaussians(train, one, standardize=True)
    return with_threshold(density, np.concatenate([density.score(val), out_of_fold]))


def cache_studies(cache: Cache, cases) -> list:
    """The study geometries of ``cases``; an :class:`InputError` when the cache was written without them."""
    studies = [cache.study(c.subject_id) for c in cases]
    if any(s is None or not s.pattern for s in studies):
        raise InputError(cache.root, "was preprocessed without study geometries (an older cache): run "
                         "`breastcmsl-train preprocess` into a new --cache for a training-domain record")
    return studies


def measure_domain(run_dir: str | Path, cache_dir: str | None = None, device: str = "auto") -> DomainRecord:
    """The training-domain record of a run's best model on its cache: refused (:class:`UnusableSplitError`,
    nothing written) when the validation split has fewer than :data:`MIN_VAL` cases."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    cache = open_cache(cache_dir or run["fit"]["cache"])
    train, val = cache.split("train"), cache.split("val")
    if len(val) < MIN_VAL:
        raise UnusableSplitError(cache.root, f"the val split has {len(val)} cases; the training-domain threshold "
                                 f"needs at least {MIN_VAL}")
    _, dev = setup(device)
    net, cfg, _ = load_network(run_model_path(run_dir), dev)
    if cfg.arch != "resnet34_3d":
        raise InputError(run_dir, f"the {cfg.arch} network has no pooled 3D feature: no training-domain record")
    studies = cache_studies(cache, train)
    val_studies = cache_studies(cache, val)
    batch = max(1, int(run["fit"]["batch_size"]))
    features = {name: split_features(net, VolumeSource(cache, cases, dev, int(2e9)), batch)
                for name, cases in (("train", train), ("val", val))}
    density = fit_density(features["train"], np.array([c.label for c in train]), features["val"])
    pattern = fit_pattern(np.array([s.pattern for s in studies]), np.array([s.pattern for s in val_studies]))
    times = [s.phase_times_s for s in studies]
    median = None if any(t is None for t in times) else tuple(float(v) for v in np.median(np.array(times), 0))
    phases = cache.preprocess.phases or tuple(range(1, cfg.in_channels + 1))
    return DomainRecord(Envelope.of(studies), density, pattern, tuple(phases), median,
                        extra={"cache": str(cache.root.resolve()), "n_train": len(train), "n_val": len(val)})


def domain(run_dir: str | Path, cache_dir: str | None = None, device: str = "auto", into_model: bool = False) -> dict:
    """``breastcmsl-train domain``: measure and write the run's record; its summary."""
    record = measure_domain(run_dir, cache_dir, device)
    written = write_domain(run_dir, record, into_model)
    d, p = record.density, record.pattern
    return {"threshold": d.threshold, "n_train": d.n_train, "n_val": d.n_held_out,
            "shrinkage": round(d.shrinkage, 4), "features": int(d.means.shape[1]), "pattern_threshold": p.threshold,
            "pattern_values": int(p.means.shape[1]), "pattern_shrinkage": round(p.shrinkage, 4),
            "phases": list(record.phases), "phase_times_s": record.phase_times_s, "written": str(written)}


def fit_domain(run_dir: str | Path, device: str = "auto") -> dict | str:
    """``fit``'s last steps: the run's record into ``domain.json`` and ``model_best.safetensors``, or, where none
    can be measured (a small validation split, an older cache, the 2D network), why not (printed; an earlier
    ``domain.json`` removed), the run staying usable without one."""
    try:
        return domain(run_dir, device=device, into_model=True)
    except InputError as err:
        run_files(run_dir)["domain"].unlink(missing_ok=True)
        print(f"no training-domain record: {err}", flush=True)
        return f"no training-domain record: {err}"
