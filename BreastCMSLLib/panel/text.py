"""Every text both faces show: the result lines, the disclaimer, model labels, the evaluation summary.

One format per quantity: probabilities and cos θ with 3 decimals, distances in mm with 1 decimal.
"""

from __future__ import annotations

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
    """What a panel shows of an :class:`~BreastCMSLLib.panel.state.AnalysisResult`: ``probability`` (with
    cos θ), ``prediction`` (with the breast mask's source), ``model`` and ``disclaimer``; empty before any result."""
    if result is None:
        return {"probability": "", "cos_theta": "", "prediction": "", "model": "", "disclaimer": ""}
    mask = MASK_SOURCES.get(result.mask_source, result.mask_source)
    return {"probability": f"{result.probability:.3f}", "cos_theta": f"cos θ = {result.cos_theta:.3f}",
            "prediction": f"{result.prediction} (breast mask from the {mask})",
            "model": model_label(result.model), "disclaimer": disclaimer(result.model)}


def distance_text(mm: float) -> str:
    return f"{mm:.1f}"


def evaluation_rows_text(rows: list[dict]) -> list[dict[str, str]]:
    """The evaluation table's rows as text: probability with 3 decimals, distances in mm with 1."""
    return [{"case": row["case"], "probability": f"{row['probability']:.3f}",
             "COAM mm": distance_text(row["COAM mm"]), "CAM mm": distance_text(row["CAM mm"])} for row in rows]


def evaluation_text(summary: dict | None) -> str:
    """One line on the evaluation table: mean ± std of each distance over its ``n`` cases."""
    if not summary:
        return ""
    return (f"n = {summary['n']}: COAM {distance_text(summary['coam_mean_mm'])} ± "
            f"{distance_text(summary['coam_std_mm'])} mm, CAM {distance_text(summary['cam_mean_mm'])} ± "
            f"{distance_text(summary['cam_std_mm'])} mm (mean ± std)")
