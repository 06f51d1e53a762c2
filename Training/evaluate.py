"""``evaluate``, ``compare`` and ``export``: Table-1 metrics with bootstrap CIs, figures, model files."""

from __future__ import annotations

import csv
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
from BreastCMSLLib.cohort.metrics import TABLE_HEADER, bootstrap_metrics, table_row
from BreastCMSLLib.distributed import setup
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.modelfile import save_model

from .cache import open_cache
from .data import VolumeSource
from .inference import predict
from .runmodel import load_network, method_of, run_model_path

METHOD_NAMES = {"cmsl": "CMSL (ours)", "nsl": "NSL", "bce": "BCE (3D ResNet34)", "mil2d": "2D MIL",
                "sparse_mil": "3D sparse MIL", "dkmt": "DK-MT"}


def predict_split(run_dir: str | Path, split: str = "test", cache_dir: str | None = None, device: str = "auto"):
    """(cases, predictions, ModelConfig, MethodConfig) of the run's best model on a split of its cache."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise InputError(run_dir, "is not a training run folder (no run.json)")
    run = json.loads((run_dir / "run.json").read_text())
    _, dev = setup(device)
    net, cfg, provenance = load_network(run_model_path(run_dir), dev)
    method = method_of(provenance)
    cache = open_cache(cache_dir or run["fit"]["cache"])
    cases = cache.split(split)
    if not cases:
        raise InputError(cache.root, f"has no finished cases in split {split!r}")
    source = VolumeSource(cache, cases, dev, resident_bytes=int(2e9))
    return cases, predict(method, cfg, net, source, batch_size=max(1, run["fit"]["batch_size"])), cfg, method


def evaluate(run_dir: str | Path, split: str = "test", cache_dir: str | None = None, device: str = "auto",
             n_boot: int = 2000) -> dict:
    """Predict ``split`` of the run's cache with its best model; write ``RUN_DIR/eval/`` and return metrics."""
    run_dir = Path(run_dir)
    cases, pred, cfg, method = predict_split(run_dir, split, cache_dir, device)
    metrics = bootstrap_metrics(pred["label"], pred["probability"], n_boot=n_boot)
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    result = {"method": method.name, "split": split, "n": len(cases), "n_malignant": int(pred["label"].sum()),
              "threshold": {"probability": 0.5, **({"cos_theta": 0.0} if cfg.angular else {})},
              "bootstrap": {"n": n_boot, "ci": 0.95, "kind": "percentile"}, "metrics": metrics}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=1))
    atomic_write_text(out / "table_row.md", table_row(METHOD_NAMES[method.name], metrics) + "\n")
    rows = io.StringIO()
    w = csv.writer(rows, lineterminator="\n")
    w.writerow(["subject_id", "label", "probability", "cos_theta"])
    for c, y, p, cos in zip(cases, pred["label"], pred["probability"], pred["cos_theta"], strict=True):
        w.writerow([c.subject_id, int(y), f"{p:.6f}", "" if math.isnan(cos) else f"{cos:.6f}"])
    atomic_write_text(out / "predictions.csv", rows.getvalue())
    _roc_figure(out / "roc.png", pred["label"], pred["probability"], METHOD_NAMES[method.name], metrics["auc"])
    if cfg.angular:
        _cos_histogram(out / "cos_hist.png", pred["label"], pred["cos_theta"], cfg.m if cfg.loss == "cmsl" else 0.0,
                       METHOD_NAMES[method.name])
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
        rows.append(table_row(METHOD_NAMES.get(result["method"], result["method"]), result["metrics"]))
    text = (f"Table 1 on the {split} split (value [95% bootstrap CI], threshold p = 0.5)\n\n"
            + TABLE_HEADER + "\n" + "\n".join(rows) + "\n")
    atomic_write_text(out, text)
    return text


def export(run_dir: str | Path, out: str | Path, name: str | None = None, synthetic: bool = False) -> str:
    """Write the run's best model as the deployable model file; returns its sha256. ``synthetic`` marks a
    model trained on phantoms (the Slicer module then labels it synthetic, not for diagnosis)."""
    run_dir = Path(run_dir)
    net, cfg, provenance = load_network(run_model_path(run_dir), torch.device("cpu"))
    metrics = run_dir / "eval" / "metrics.json"
    provenance = {**provenance, "name": name or f"{provenance.get('method', cfg.loss)}-{run_dir.name}",
                  "thresholds": {"probability": 0.5, **({"cos_theta": 0.0} if cfg.angular else {})},
                  "run": str(run_dir.resolve()), "synthetic": synthetic,
                  "evaluation": json.loads(metrics.read_text()) if metrics.is_file() else None}
    return save_model(out, net, cfg, provenance)
