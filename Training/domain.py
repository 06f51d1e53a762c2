"""The training domain of a run (:class:`~BreastCMSLLib.network.domain.DomainRecord`): measured on the run's cache
with its best model and kept in ``RUN/domain.json`` (the record and the sha256 of the model file it belongs to);
``fit`` also writes it into ``model_best.safetensors``, ``export`` into the exported model.

The feature density is Lee et al.'s (NeurIPS 2018): one Gaussian per class over the pooled pre-head feature of the
training split, with one covariance shared by the classes (the class-centred features pooled), here estimated with
scikit-learn's Ledoit-Wolf shrinkage: at the widths trained on a CPU the feature count (128 at width 0.25) exceeds
the training cases, where the plain empirical covariance is singular. The score of a case is its smallest
Mahalanobis distance to a class mean; the threshold is the smallest validation score with at least
:data:`COVERAGE` of the validation cases at or below it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf, empirical_covariance, shrunk_covariance

from BreastCMSLLib.distributed import setup
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.domain import DomainRecord, Envelope, FeatureDensity

from .cache import Cache, open_cache
from .calibration import UnusableSplitError
from .data import VolumeSource
from .inference import prepare
from .runfiles import read_run, run_files, run_model_path, write_domain
from .runmodel import load_network

MIN_VAL = 10  # validation cases needed to set the threshold
COVERAGE = 0.95  # of the validation cases inside the threshold


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


def fit_density(train: np.ndarray, label: np.ndarray, val: np.ndarray,
                shrinkage: float | None = None) -> FeatureDensity:
    """Class means of the ``train`` features (N, D) by ``label``, their shared covariance (Ledoit-Wolf, or
    ``shrinkage`` in [0, 1) towards the scaled identity; 0: the empirical covariance), the precision's Cholesky
    factor and the threshold from the ``val`` features."""
    train, label = np.asarray(train, np.float64), np.asarray(label).astype(int)
    classes = np.unique(label)
    means = np.stack([train[label == k].mean(0) for k in classes])
    centred = train - means[np.searchsorted(classes, label)]
    if shrinkage is None:
        lw = LedoitWolf(assume_centered=True).fit(centred)
        cov, shrinkage = lw.covariance_, float(lw.shrinkage_)
    else:
        cov = shrunk_covariance(empirical_covariance(centred, assume_centered=True), shrinkage)
    cholesky = np.linalg.cholesky(np.linalg.inv(cov))
    density = FeatureDensity(means.astype(np.float32), cholesky.astype(np.float32), 1.0, len(train), len(val),
                             shrinkage)
    scores = np.sort(density.score(val))
    threshold = float(scores[math.ceil(COVERAGE * len(scores)) - 1])
    return FeatureDensity(density.means, density.cholesky, threshold, len(train), len(val), shrinkage)


def cache_studies(cache: Cache, cases) -> list:
    """The study geometries of ``cases``; an :class:`InputError` when the cache was written without them."""
    studies = [cache.study(c.subject_id) for c in cases]
    if any(s is None for s in studies):
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
    batch = max(1, int(run["fit"]["batch_size"]))
    features = {name: split_features(net, VolumeSource(cache, cases, dev, int(2e9)), batch)
                for name, cases in (("train", train), ("val", val))}
    density = fit_density(features["train"], np.array([c.label for c in train]), features["val"])
    times = [s.phase_times_s for s in studies]
    median = None if any(t is None for t in times) else tuple(float(v) for v in np.median(np.array(times), 0))
    phases = cache.preprocess.phases or tuple(range(1, cfg.in_channels + 1))
    return DomainRecord(Envelope.of(studies), density, tuple(phases), median,
                        extra={"cache": str(cache.root.resolve()), "n_train": len(train), "n_val": len(val)})





def domain(run_dir: str | Path, cache_dir: str | None = None, device: str = "auto", into_model: bool = False) -> dict:
    """``breastcmsl-train domain``: measure and write the run's record; its summary."""
    record = measure_domain(run_dir, cache_dir, device)
    written = write_domain(run_dir, record, into_model)
    d = record.density
    return {"threshold": d.threshold, "n_train": d.n_train, "n_val": d.n_val, "shrinkage": round(d.shrinkage, 4),
            "features": int(d.means.shape[1]), "phases": list(record.phases),
            "phase_times_s": record.phase_times_s, "written": str(written)}


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
