"""``calibrate``, ``evaluate``, ``compare`` and ``export``: temperature scaling on the validation split,
Table-1 and calibration metrics with bootstrap CIs, figures, model files."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import roc_curve

from BreastCMSLLib.atomic import atomic_path, atomic_write_text
from BreastCMSLLib.cohort.metrics import bootstrap_metrics, table_header
from BreastCMSLLib.cohort.metrics import table_row as metrics_row
from BreastCMSLLib.distributed import setup
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.modelfile import save_model

from .cache import open_cache
from .calibration import calibrate_scores, with_rule
from .data import VolumeSource
from .inference import predict
from .metrics import CALIBRATION_BINS, bin_index, bootstrap_calibration, calibrated_probability, shown
from .ood import evaluate_applicability
from .runfiles import read_domain, read_run, read_run_calibration, run_model_path, write_run_calibration
from .runmodel import load_network, method_of

TABLE_HEADER = table_header(("ECE", "ECE (calibrated)"))
METHOD_NAMES = {"cmsl": "CMSL (ours)", "nsl": "NSL", "bce": "BCE (3D ResNet34)", "mil2d": "2D MIL",
                "sparse_mil": "3D sparse MIL", "dkmt": "DK-MT"}


def table_row(name: str, metrics: dict, calibration: dict | None = None) -> str:
    """One Table-1 row: value [95% CI] per metric, then the ECE before and after calibration (n/a when absent)."""
    cal = calibration or {}
    return metrics_row(name, metrics, tuple(shown((cal.get(k) or {}).get("ece")) for k in ("before", "after")))


def predict_split(run_dir: str | Path, split: str = "test", cache_dir: str | None = None, device: str = "auto"):
    """(cases, predictions, ModelConfig, MethodConfig) of the run's best model on a split of its cache
    (predictions: probability, score, cos_theta, loss, label; see :func:`Training.inference.predict`)."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    _, dev = setup(device)
    net, cfg, provenance = load_network(run_model_path(run_dir), dev)
    method = method_of(provenance)
    cache = open_cache(cache_dir or run["fit"]["cache"])
    cases = cache.split(split)
    if not cases:
        raise InputError(cache.root, f"has no finished cases in split {split!r}")
    source = VolumeSource(cache, cases, dev, resident_bytes=int(2e9))
    return cases, predict(method, cfg, net, source, batch_size=max(1, run["fit"]["batch_size"])), cfg, method


def calibrate(run_dir: str | Path, cache_dir: str | None = None, device: str = "auto", n_boot: int = 2000) -> dict:
    """Fit the temperature on the run's validation split and write ``RUN_DIR/calibration.json`` (atomic).

    A validation split with fewer than 10 cases or one class is refused (:class:`UnusableSplitError`)
    before anything is written."""
    run_dir = Path(run_dir)
    cases, pred, _, _ = predict_split(run_dir, "val", cache_dir, device)
    cal = calibrate_scores(pred["score"], pred["label"], run_dir, "val", n_boot=n_boot)
    written = write_run_calibration(run_dir, cal, [c.subject_id for c in cases], pred["label"], pred["score"])
    return {"temperature": cal.temperature, "n_val": cal.n_val, "before": dataclasses.asdict(cal.before),
            "after": dataclasses.asdict(cal.after), "written": str(written)}


def evaluate(run_dir: str | Path, split: str = "test", cache_dir: str | None = None, device: str = "auto",
             n_boot: int = 2000, ood: bool = True) -> dict:
    """Predict ``split`` of the run's cache with its best model; write ``RUN_DIR/eval/`` and return metrics.

    Table 1's metrics are taken at p = 0.5, the same decision before and after calibration (T keeps the
    score's sign); the calibration metrics are given for T = 1 and, when the run is calibrated, its T. With ``ood``
    and a training-domain record in the model: its in-domain rate on the split and its AUROC against inputs made
    out of the split's distribution (:mod:`.ood`)."""
    run_dir = Path(run_dir)
    cases, pred, cfg, method = predict_split(run_dir, split, cache_dir, device)
    metrics = bootstrap_metrics(pred["label"], pred["probability"], n_boot=n_boot)
    run_cal = read_run_calibration(run_dir)
    t = run_cal[0].temperature if run_cal else 1.0
    calibration = {"calibrated": run_cal is not None, "temperature": t,
                   "n_val": run_cal[0].n_val if run_cal else 0, "bins": CALIBRATION_BINS,
                   "before": bootstrap_calibration(pred["label"], pred["score"], 1.0, n_boot),
                   "after": bootstrap_calibration(pred["label"], pred["score"], t, n_boot) if run_cal else None}
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    result = {"method": method.name, "split": split, "n": len(cases), "n_malignant": int(pred["label"].sum()),
              "threshold": {"probability": 0.5, **({"cos_theta": 0.0} if cfg.angular else {})},
              "bootstrap": {"n": n_boot, "ci": 0.95, "kind": "percentile"}, "metrics": metrics,
              "calibration": calibration}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=1))
    atomic_write_text(out / "table_row.md", table_row(METHOD_NAMES[method.name], metrics, calibration) + "\n")
    rows = io.StringIO()
    w = csv.writer(rows, lineterminator="\n")
    w.writerow(["subject_id", "label", "probability", "cos_theta", "score", "probability_calibrated"])
    calibrated = calibrated_probability(pred["score"], t)
    for c, y, p, cos, z, q in zip(cases, pred["label"], pred["probability"], pred["cos_theta"], pred["score"],
                                  calibrated, strict=True):
        w.writerow([c.subject_id, int(y), f"{p:.6f}", "" if math.isnan(cos) else f"{cos:.6f}", f"{z:.6f}", f"{q:.6f}"])
    atomic_write_text(out / "predictions.csv", rows.getvalue())
    _roc_figure(out / "roc.png", pred["label"], pred["probability"], METHOD_NAMES[method.name], metrics["auc"])
    _reliability_figure(out / "reliability.png", pred["label"], pred["score"], t if run_cal else None,
                        METHOD_NAMES[method.name], calibration)
    if cfg.angular:
        _cos_histogram(out / "cos_hist.png", pred["label"], pred["cos_theta"], cfg.m if cfg.loss == "cmsl" else 0.0,
                       METHOD_NAMES[method.name])
    if ood:  # the training-domain check on this split and on inputs made out of its distribution (Training/ood.py)
        result["applicability"] = evaluate_applicability(run_dir, cases, setup(device)[1])
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=1))
    return result


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _roc_figure(path: Path, label, probability, name: str, auc: dict) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    if len(np.unique(label)) == 2:
        fpr, tpr, _ = roc_curve(label, probability)
        ax.plot(fpr, tpr, label=f"{name}, AUC {auc['value']:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _reliability_figure(path: Path, label, score, temperature: float | None, name: str, calibration: dict) -> None:
    """Reliability diagram: per bin of 15 equal-width probability bins, the fraction malignant against the
    mean probability, before (T = 1) and after calibration, with the number of cases per bin below."""
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(4.5, 5.5), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    curves = [("before", 1.0, "tab:gray", "o")] + ([("after", temperature, "tab:blue", "s")] if temperature else [])
    for key, t, color, marker in curves:
        p = calibrated_probability(score, t)
        b = bin_index(p)
        n = np.bincount(b, minlength=CALIBRATION_BINS)
        full = n > 0
        mean_p = np.bincount(b, p, CALIBRATION_BINS)[full] / n[full]
        frac = np.bincount(b, label, CALIBRATION_BINS)[full] / n[full]
        ece = calibration[key]["ece"]["value"]
        ax.plot(mean_p, frac, marker=marker, color=color, label=f"{key} (T = {t:.3g}), ECE {ece:.3f}")
        counts.bar(edges[:-1], n, width=np.diff(edges), align="edge", alpha=0.5, color=color, edgecolor="k", lw=0.3)
    ax.set_ylabel("fraction malignant")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    counts.set_xlabel("predicted probability of malignancy")
    counts.set_ylabel("cases")
    fig.tight_layout()
    _save(fig, path)


def _cos_histogram(path: Path, label, cos, m: float, name: str) -> None:
    """cos(theta) per class with the decision line (0) and the margin lines (+-m), after the paper's Fig. 2."""
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.linspace(-1, 1, 41)
    ax.hist(cos[label == 0], bins=bins, alpha=0.6, color="tab:blue", label="benign")
    ax.hist(cos[label == 1], bins=bins, alpha=0.6, color="tab:red", label="malignant")
    ax.axvline(0, color="k", lw=1, label="decision (cos = 0)")
    if m:
        for v in (-m, m):
            ax.axvline(v, color="k", ls="--", lw=0.8)
        ax.plot([], [], "k--", lw=0.8, label=f"margin ±{m:g}")
    ax.set_xlabel("cos θ")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def compare(run_dirs: list[str | Path], out: str | Path) -> str:
    """The paper's Table 1 for evaluated runs (``RUN_DIR/eval/metrics.json``); written to ``out``."""
    rows, split = [], None
    for run in run_dirs:
        path = Path(run) / "eval" / "metrics.json"
        if not path.is_file():
            raise InputError(run, "has not been evaluated (no eval/metrics.json); run `breastcmsl-train evaluate`")
        result = json.loads(path.read_text())
        split = split or result["split"]
        rows.append(table_row(METHOD_NAMES.get(result["method"], result["method"]), result["metrics"],
                              result.get("calibration")))
    text = (f"Table 1 on the {split} split (value [95% bootstrap CI], threshold p = 0.5; ECE over "
            f"{CALIBRATION_BINS} bins before and after temperature scaling on the validation split)\n\n"
            + TABLE_HEADER + "\n" + "\n".join(rows) + "\n")
    atomic_write_text(out, text)
    return text


def export(run_dir: str | Path, out: str | Path, name: str | None = None, synthetic: bool = False,
           operating_point: str | None = None) -> str:
    """Write the run's best model as the deployable model file; returns its sha256. ``synthetic`` marks a
    model trained on phantoms (the Slicer module then labels it synthetic, not for diagnosis).

    The run's calibration (``calibrate``) and training-domain record (:mod:`.domain`) go into the file;
    ``operating_point`` (``sensitivity=0.9``, ``specificity=0.9``; default p >= 0.5) picks the threshold on its
    validation scores. An uncalibrated run exports an uncalibrated model (T = 1, threshold 0.5); a run without a
    record a model whose analyses say their applicability is unknown."""
    run_dir = Path(run_dir)
    net, cfg, provenance = load_network(run_model_path(run_dir), torch.device("cpu"))
    run_cal = read_run_calibration(run_dir)
    domain = read_domain(run_dir)
    calibration = None
    if run_cal:
        calibration = with_rule(*run_cal, operating_point, run_dir) if operating_point else run_cal[0]
    elif operating_point:
        raise InputError(run_dir, "is not calibrated (no calibration.json), so --operating-point has no validation "
                         "scores to choose from; run `breastcmsl-train calibrate --run RUN` first")
    threshold = calibration.operating_point.threshold if calibration else 0.5
    t = calibration.temperature if calibration else 1.0
    metrics = run_dir / "eval" / "metrics.json"
    z = t * math.log(threshold / (1 - threshold))  # the pre-sigmoid score at the threshold
    provenance = {**provenance, "name": name or f"{provenance.get('method', cfg.loss)}-{run_dir.name}",
                  "thresholds": {"probability": threshold, **({"cos_theta": z / cfg.s} if cfg.angular else {})},
                  "run": str(run_dir.resolve()), "synthetic": synthetic,
                  "evaluation": json.loads(metrics.read_text()) if metrics.is_file() else None}
    return save_model(out, net, cfg, provenance, calibration, domain)
