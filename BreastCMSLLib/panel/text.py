"""Every text both faces show: the result lines, the operating line, the disclaimer, model labels, map names,
the evaluation summary.

One format per quantity: probabilities and cos θ with 3 decimals, distances in mm with 1 decimal.
"""

from __future__ import annotations

import math

from BreastCMSLLib.network.domain import applicability_line

MAP_LABELS = {"coam": "COAM", "cam": "CAM", "fine": "fine"}  # each map of MAP_NAMES as the faces name it
# a result without calibration fields (made before models carried a temperature) reads as uncalibrated
UNCALIBRATED = "uncalibrated (this result records no calibration)"

MASK_SOURCES = {"t1": "non-fat-suppressed T1", "pre": "pre-contrast phase", "sub": "subtractions"}
CANCELLED = "Cancelled; the scene is unchanged."
GENERAL_DISCLAIMER = "Research software, not for diagnosis."
NO_MODEL = ("No model installed. No pretrained clinical BreastCMSL model exists: import a model file, or build the "
            "synthetic demo model (trained on phantoms, not for diagnosis).")


def disclaimer(model: dict) -> str:
    """The line a panel shows under a result or a model (``model``: its ``untrained``/``synthetic`` flags)."""
    if model.get("untrained"):
        return f"Untrained model (random weights): the output means nothing. {GENERAL_DISCLAIMER}"
    if model.get("synthetic"):
        return f"Synthetic demo model, trained on phantoms only. {GENERAL_DISCLAIMER}"
    return GENERAL_DISCLAIMER


def model_flags(model: dict) -> str:
    """How a model was made: untrained, synthetic or trained."""
    return "untrained" if model.get("untrained") else "synthetic" if model.get("synthetic") else "trained"


def model_label(model: dict) -> str:
    """One line naming a model: name, version, short sha256 and how it was made."""
    name = " ".join(filter(None, [model["name"], model.get("version")]))
    return f"{name} · {model['sha256'][:12]} · {model_flags(model)}"


def result_text(result) -> dict[str, str]:
    """What a panel shows of an :class:`~BreastCMSLLib.panel.state.AnalysisResult`: ``probability`` (calibrated
    where the model is; with cos θ; a per-breast model's study "left 0.xyz, right 0.xyz", and its ``prediction``
    per breast too), ``calibration`` ("calibrated" with the uncalibrated value, or
    "uncalibrated"), ``operating_line`` (:func:`operating_text`), ``prediction`` (with the breast mask's
    source), ``model``, ``disclaimer``, ``maps`` (the maps' names, comma-separated), ``applicability`` (the line
    shown above the probability) and ``outside`` ("outside" when the study lies outside the model's training
    domain: the faces then grey the probability and the prediction, else ""); empty before any result."""
    if result is None:
        return dict.fromkeys(("probability", "calibration", "operating_line", "cos_theta", "prediction", "model",
                              "disclaimer", "maps", "applicability", "outside"), "")
    mask = MASK_SOURCES.get(result.mask_source, result.mask_source)
    breasts = getattr(result, "breasts", None) or {}
    probability = ", ".join(f"{side} {b['probability']:.3f}" for side, b in breasts.items())
    prediction = ", ".join(f"{side} {b['prediction']}" for side, b in breasts.items())
    return {"probability": probability or f"{result.probability:.3f}", "calibration": calibration_text(result),
            "operating_line": operating_text(result), "cos_theta": f"cos θ = {result.cos_theta:.3f}",
            "prediction": f"{prediction or result.prediction} (breast mask from the {mask})",
            "model": model_label(result.model), "disclaimer": disclaimer(result.model),
            "maps": ", ".join(MAP_LABELS[name] for name in result.maps),
            "applicability": applicability_line(result.applicability) if result.applicability else "",
            "outside": "outside" if result.applicability.get("in_domain") is False else ""}


def calibration_text(result) -> str:
    """"calibrated (uncalibrated 0.xyz)" or "uncalibrated": what the probability shown is."""
    if result.calibrated and result.probability_uncalibrated is not None:
        return f"calibrated (uncalibrated {result.probability_uncalibrated:.3f})"
    return "calibrated" if result.calibrated else "uncalibrated"


def operating_text(result) -> str:
    """The one plain line under the probability: the model's threshold with its validation sensitivity and
    specificity, or the "uncalibrated" flag. The line is the one result.json holds, made by the Lib's
    :func:`~BreastCMSLLib.network.calibration.operating_line` when the case was analyzed (the faces do not
    import torch); :data:`UNCALIBRATED` for a result that records none."""
    return result.operating_line or UNCALIBRATED


def distance_text(mm: float) -> str:
    """Millimetres with 1 decimal; "–" for a map the result did not have (NaN)."""
    return f"{mm:.1f}" if math.isfinite(mm) else "–"


DISTANCE_COLUMNS = tuple(f"{label} mm" for label in MAP_LABELS.values())
EVALUATION_COLUMNS = ("case", "probability", *DISTANCE_COLUMNS, "initial rise", "delayed phase", "PE %", "FTV mL")


def number_text(value: float, decimals: int) -> str:
    """A number with ``decimals`` decimals; "–" where it is missing (NaN)."""
    return f"{value:.{decimals}f}" if math.isfinite(value) else "–"


def evaluation_rows_text(rows: list[dict]) -> list[dict[str, str]]:
    """The evaluation table's rows as text (keys :data:`EVALUATION_COLUMNS`): probability with 3 decimals,
    distances in mm with 1, the curve classes in words, PE (%) with 0 decimals and FTV (mL) with 2; "–" where a
    row has none."""
    return [{"case": row["case"], "probability": f"{row['probability']:.3f}",
             **{key: distance_text(row[key]) for key in DISTANCE_COLUMNS},
             **{key: row.get(key) or "–" for key in ("initial rise", "delayed phase")},
             "PE %": number_text(row.get("PE %", math.nan), 0), "FTV mL": number_text(row.get("FTV mL", math.nan), 2)}
            for row in rows]


def evaluation_text(summary: dict | None) -> str:
    """One line on the evaluation table: mean ± std of each map's distance over its ``n`` cases (a map with
    fewer rows than the table says so; one without rows is left out)."""
    if not summary:
        return ""
    parts = []
    for name, label in MAP_LABELS.items():
        n = summary.get(f"{name}_n", summary["n"])
        if n:
            counted = "" if n == summary["n"] else f" (n = {n})"
            parts.append(f"{label} {distance_text(summary[f'{name}_mean_mm'])} ± "
                         f"{distance_text(summary[f'{name}_std_mm'])} mm{counted}")
    return f"n = {summary['n']}: {', '.join(parts)} (mean ± std)"
