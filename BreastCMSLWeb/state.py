"""One tab's page state as typed dataclasses, bound to trame's state by ``TypedState`` (trame-slicer's pattern):
the controller reads and writes ``typed.data.<field>``, the page binds ``typed.name.<field>`` (the state key)."""

from __future__ import annotations

from dataclasses import dataclass, field

from BreastCMSLLib.panel.kinetics import chart_lines, legend
from BreastCMSLLib.panel.roles import FIELDS
from BreastCMSLLib.panel.text import MAP_LABELS, result_text


@dataclass
class ResultView:
    """The current result as text (empty before one, or once the inputs changed), and the lesion centre."""

    has_result: bool = False
    probability: str = ""
    calibration: str = ""  # "calibrated (uncalibrated 0.xyz)" or "uncalibrated"
    operating_line: str = ""  # the model's threshold with its validation sensitivity and specificity
    cos_theta: str = ""
    prediction: str = ""
    model: str = ""
    disclaimer: str = ""
    applicability: str = ""  # inside or outside the model's training domain, and why (shown above the probability)
    outside: str = ""  # "outside" when the study lies outside the training domain: probability and prediction greyed
    maps: list[dict] = field(default_factory=list)  # the result's maps: value (coam, cam, fine), label
    centre: str = ""  # RAS mm, as text
    placing: bool = False  # the next click on a view places the centre

    @classmethod
    def of(cls, result) -> ResultView:
        """The view of an :class:`~BreastCMSLLib.panel.state.AnalysisResult` (None: no result)."""
        text = {key: value for key, value in result_text(result).items() if key != "maps"}
        maps = [{"value": name, "label": MAP_LABELS[name]} for name in (result.maps if result else ())]
        return cls(has_result=result is not None, maps=maps, **text)


@dataclass
class KineticsView:
    """The Kinetics section: the last curve (its source, its classes in words, drawn as an SVG polyline into a
    ``CHART`` box, :func:`~BreastCMSLLib.panel.kinetics.chart_lines`), the FTV line and the SER legend."""

    source: str = ""  # "point 12.0, -30.5, 4.0 (RAS mm)" or "fine peak"
    words: str = ""
    points: str = ""  # the polyline's "x,y x,y ..." (empty before a curve)
    zero_y: float = 0.0  # the 0 % line
    t_max: str = ""  # the axes' ends, as text
    p_min: str = ""
    p_max: str = ""
    ftv: str = ""
    placing: str = ""  # "point" or "box" while the next click places it
    peak_map: str = "coam"
    overlay: str = "ser_label"
    legend: list[dict] = field(default_factory=lambda: [{"hex": e["hex"], "text": e["text"]} for e in legend()])

    @classmethod
    def of(cls, curve: dict, source: str, width: float, height: float, **kept) -> KineticsView:
        """The view of a curve (:meth:`~BreastCMSLLib.panel.kinetics.KineticsSection.curve_at_ras`)."""
        lines = chart_lines(curve["times_s"], curve["curve_percent"], width, height)
        return cls(source=source, words=curve["words"], points=lines["points"], zero_y=lines["zero_y"],
                   t_max=f"{lines['t_max']:.0f} s", p_min=f"{lines['p_min']:.0f} %", p_max=f"{lines['p_max']:.0f} %",
                   **kept)


@dataclass
class TabState:
    """Everything the page shows or binds."""

    cases: list[dict] = field(default_factory=list)  # name, kind ("case" or "dicom")
    case_name: str = ""
    case_kind: str = ""
    loaded: bool = False
    roles: list[dict] = field(default_factory=list)  # the DICOM role table's rows, as text
    role_overrides: dict[str, str] = field(default_factory=lambda: dict.fromkeys(FIELDS, ""))
    models: list[dict] = field(default_factory=list)  # the model store's entries (file, title, in_channels, ...)
    model_file: str = ""
    busy: bool = False
    progress: float = 0.0
    stage: str = ""
    error: str = ""
    overlay_map: str = "coam"  # the map shown over the reference (one of the result's maps)
    show_overlay: bool = True
    compare: bool = False
    compare_left: str = "coam"  # the compare view's maps, left | right
    compare_right: str = "fine"
    rows: list[dict] = field(default_factory=list)  # the evaluation table, as text
    summary: str = ""
    window: float = 1.0
    level: float = 0.5
    wl_low: float = 0.0
    wl_high: float = 1.0
    result: ResultView = field(default_factory=ResultView)
    kinetics: KineticsView = field(default_factory=KineticsView)
