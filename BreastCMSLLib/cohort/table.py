"""``results.csv`` (one row per case) and ``summary.md`` (Table 1's metrics and centre distances) of a cohort.

Peaks are LPS mm; distances are mm from the map's peak to the lesion centre; seconds are the case's own stage
times (read, preprocess, inference, maps, write) as its result.json records them.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.config import MAP_NAMES

COLUMNS = ("id", "status", "in_domain", "probability", "prediction", "threshold",
           *(f"{name}_peak_lps_{axis}" for name in MAP_NAMES for axis in "xyz"), "mask_source", "roles", "label",
           *(f"{name}_distance_mm" for name in MAP_NAMES), "fine_initial", "fine_delayed", "ftv_ml", "seconds",
           "applicability_reasons", "error")
IN_DOMAIN = {True: "true", False: "false", None: "unknown"}  # result.json's applicability.in_domain


def roles_used(inputs: dict) -> str:
    """``role=series`` per input of result.json's ``inputs``: DICOM series numbers (``:phase`` within a
    multi-phase series), or the case folder's file names."""
    if "dicom" in inputs:
        return " ".join(f"{r['role']}={r['series_number']}" + (f":{r['phase']}" if r["phases_in_series"] > 1 else "")
                        for r in inputs["dicom"]["roles"])
    names = ["pre", *(f"post_{k}" for k in range(1, len(inputs["series"])))] if inputs["kind"] == "phases" else [
        f"sub_{k}" for k in range(1, len(inputs["series"]) + 1)]
    pairs = ([("t1", inputs["t1"])] if inputs["t1"] else []) + list(zip(names, inputs["series"], strict=True))
    return " ".join(f"{role}={Path(path).name}" for role, path in pairs)


def ok_row(case_id: str, result: dict, label: int | None) -> dict:
    """The row of a case analyzed (now or by an earlier run) from its result.json."""
    def mm(v):
        return f"{v:.2f}"
    app = result.get("applicability") or {"in_domain": None, "reasons": ["analyzed without a training-domain check"]}
    row = {"id": case_id, "status": "ok", "in_domain": IN_DOMAIN[app["in_domain"]],
           "applicability_reasons": "; ".join(app["reasons"]), "probability": f"{result['probability']:.6f}",
           "prediction": result["prediction"], "threshold": f"{result.get('threshold', 0.5):.6f}",
           "mask_source": result["mask_source"],
           "roles": roles_used(result["inputs"]), "label": "" if label is None else str(label),
           "seconds": f"{sum(result['timings'].values()):.2f}", "error": ""}
    row.update(kinetics_cells(result.get("kinetics") or {}))
    for name in (n for n in MAP_NAMES if f"{n}_peak_lps" in result):
        row.update(zip((f"{name}_peak_lps_{a}" for a in "xyz"), map(mm, result[f"{name}_peak_lps"]), strict=True))
        row[f"{name}_distance_mm"] = mm(result[f"{name}_distance_mm"]) if f"{name}_distance_mm" in result else ""
    return row


def kinetics_cells(record: dict) -> dict:
    """The kinetics columns from result.json's ``kinetics``: the BI-RADS classes at the fine map's peak and the FTV
    (mL) of the manifest's ``roi_box``; empty where not measured (no pre-contrast phase, no fine map, no box)."""
    fine = (record.get("peak_curves") or {}).get("fine") or {}
    ftv = record.get("ftv_ml")
    return {"fine_initial": fine.get("initial") or "", "fine_delayed": fine.get("delayed") or "",
            "ftv_ml": "" if ftv is None else f"{ftv:.4f}"}


def failed_row(case_id: str, status: str, error: str, seconds: float, label: int | None) -> dict:
    """The row of a case that failed (``error``) or was not a case at all (``skipped``)."""
    return {"id": case_id, "status": status, "label": "" if label is None else str(label),
            "seconds": f"{seconds:.2f}", "error": error}


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_results(path: Path, rows: list[dict]) -> None:
    """Rewrite ``results.csv`` atomically."""
    atomic_write_text(path, csv_text(rows))


def _distances(rows: list[dict], name: str) -> str:
    d = np.array([float(r[f"{name}_distance_mm"]) for r in rows if r["status"] == "ok" and r[f"{name}_distance_mm"]])
    if not d.size:
        return f"| {name.upper()} | 0 | n/a | n/a | n/a |"
    return f"| {name.upper()} | {d.size} | {np.median(d):.1f} | {d.mean():.1f} | {d.max():.1f} |"


def _applicability(rows: list[dict]) -> list[str]:
    """summary.md's count of the analyzed cases inside, outside and without the model's training domain."""
    ok = [r for r in rows if r["status"] == "ok"]
    n = {value: sum(r["in_domain"] == value for r in ok) for value in IN_DOMAIN.values()}
    return ["## Applicability", "", f"Of {len(ok)} analyzed cases, {n['true']} lie inside what the model was trained "
            f"on, {n['false']} outside (their probabilities are extrapolations; reasons in results.csv) and "
            f"{n['unknown']} unknown (no training-domain record).", ""]


def summary_text(rows: list[dict], model: dict, n_boot: int = 2000) -> str:
    """summary.md: counts, Table 1's metrics over the analyzed cases with a label (``breastcmsl-train
    evaluate``'s code: value and 95 % percentile-bootstrap CI, at the model's threshold) and the peak-to-centre
    distances of every map."""
    from BreastCMSLLib.cohort.metrics import TABLE_HEADER, bootstrap_metrics, table_row

    count = {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "skipped")}
    labelled = [r for r in rows if r["status"] == "ok" and r["label"] != ""]
    lines = [f"# Cohort summary: {model['name']}", "",
             f"Model `{model['path']}` (sha256 {model['sha256'][:12]}{', untrained' if model['untrained'] else ''}). "
             f"{len(rows)} cases: {count['ok']} analyzed, {count['error']} failed, {count['skipped']} skipped "
             "(see results.csv).", "", *_applicability(rows), "## Classification", ""]
    if labelled:
        label = np.array([int(r["label"]) for r in labelled])
        probability = np.array([float(r["probability"]) for r in labelled])
        threshold = float(labelled[0]["threshold"] or 0.5)  # one model: one operating point
        metrics = bootstrap_metrics(label, probability, n_boot=n_boot, threshold=threshold)
        lines += [f"{len(labelled)} analyzed cases with a label ({int(label.sum())} malignant); value "
                  f"[95% percentile-bootstrap CI, {n_boot} resamples], malignant at p >= {threshold:.3f} "
                  "(the model's operating point).", "",
                  TABLE_HEADER, table_row(model["name"], metrics)]
        if any(not math.isfinite(m["value"]) for m in metrics.values()):
            lines += ["", "n/a: undefined for these cases (one class only)."]
    else:
        lines.append("No analyzed case has a label.")
    lines += ["", "## Localization", "",
              "Distance from each map's peak to the lesion centre (LPS mm), over the analyzed cases with a centre.",
              "", "| Map | n | Median mm | Mean mm | Max mm |", "|---|---|---|---|---|",
              *(_distances(rows, name) for name in MAP_NAMES)]
    return "\n".join(lines) + "\n"
