"""The Kinetics section both faces bind (Qt-free): the enhancement curve at a clicked point or at a map's peak, its
classes in words, the PE and SER-label overlays with their legend, and the FTV of a drawn box (a markups ROI).

It works on the session's input phases (volume nodes) in this process: the maps are numpy arithmetic, no model
(:mod:`BreastCMSLLib.pipeline.kinetics_case`). Points are RAS (the scene's); the Lib's are LPS.
"""

from __future__ import annotations

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.mrml import display, nodes
from BreastCMSLLib.mrml import kinetics as scene_kinetics
from BreastCMSLLib.pipeline.kinetics import SER_COLOURS, SER_LABELS, SER_LEGEND, KineticsConfig, box_region
from BreastCMSLLib.pipeline.kinetics_case import case_kinetics
from BreastCMSLLib.pipeline.phase_times import PhaseTimes

BOX_MM = 30.0  # the side of a box placed by one click, before its handles are dragged


def curve_words(curve: dict, early_percent: float) -> str:
    """A curve's classes in words: ``fast initial rise (137 % at the early phase), washout (-39 % by the late
    phase)``."""
    text = f"{curve['initial']} initial rise ({early_percent:.0f} % at the early phase)"
    if curve["delayed"] is None:
        return text + "; no late phase to judge the delayed phase"
    return text + f", {curve['delayed']} ({curve['delayed_change_percent']:+.0f} % by the late phase)"


def legend() -> list[dict]:
    """The SER label's legend: value, name, RGB colour (0-1), its ``hex`` colour (#rrggbb) and its line."""
    return [{"label": k, "name": name, "rgb": SER_COLOURS[k], "text": SER_LEGEND[k],
             "hex": "#" + "".join(f"{round(255 * c):02x}" for c in SER_COLOURS[k])} for k, name in SER_LABELS.items()]


def ftv_text(ftv: dict) -> str:
    """An FTV in one line: ``FTV 3.42 mL (persistent 1.20, plateau 0.50, washout 1.72 mL)``."""
    parts = ", ".join(f"{name} {ml:.2f}" for name, ml in ftv["ser_volumes_ml"].items())
    return f"FTV {ftv['ftv_ml']:.2f} mL ({parts} mL)"


def chart_lines(times_s, percent, width: float = 320.0, height: float = 160.0, margin: float = 28.0) -> dict:
    """A curve drawn into a ``width`` x ``height`` box (SVG pixels, y down): ``points`` ("x,y x,y ..." of the
    polyline), ``zero_y`` (the 0 % line), and the axes' ends ``t_max`` (s) and ``p_min``/``p_max`` (%). The time
    axis starts at 0 s, the enhancement axis holds 0 % and every value."""
    t_max = max(max(times_s), 1.0)
    p_min, p_max = min(0.0, *percent), max(0.0, *percent)
    p_max = p_max if p_max > p_min else p_min + 1.0
    x = lambda t: margin + (width - 2 * margin) * t / t_max  # noqa: E731
    y = lambda p: height - margin - (height - 2 * margin) * (p - p_min) / (p_max - p_min)  # noqa: E731
    return {"points": " ".join(f"{x(t):.1f},{y(p):.1f}" for t, p in zip(times_s, percent)),
            "zero_y": round(y(0.0), 1), "t_max": t_max, "p_min": p_min, "p_max": p_max}


class KineticsSection:
    """The kinetics of a session's input phases. ``times``: their post-contrast phase times (None: unknown; a case
    with more than two post-contrast phases then needs them, :class:`InputError`)."""

    def __init__(self, session, times: PhaseTimes | None = None, cfg: KineticsConfig | None = None):
        t1, series, kind = session.inputs()
        inputs = nodes.inputs_from_nodes(t1, series, kind)
        self.session, self.scene = session, session.scene
        self.kin = case_kinetics(inputs, times or PhaseTimes(None, "the session's inputs"), cfg)
        self._nodes: dict[str, object] = {}
        self.chart = None
        self.ftv: dict | None = None  # the FTV of the last ROI measured (:meth:`ftv_in_roi`)

    def curve_at_ras(self, ras, name: str | None = None) -> dict:
        """The curve at a RAS point (mm): signal, relative enhancement per post-contrast phase, the classes,
        ``words`` and ``times_s`` (the phases' times, or their numbers where the times are unknown); drawn into
        :attr:`chart` (Slicer plot nodes) as ``name``."""
        curve = self._curve(ras)
        times = self.kin.times.post_s or list(range(1, len(curve["curve_percent"]) + 1))
        curve["times_s"] = list(times)
        self.chart = scene_kinetics.curve_chart(self.scene, name or "point", list(times), curve["curve_percent"],
                                                self.chart)
        return curve

    def _curve(self, ras) -> dict:
        curve = self.kin.curve(nodes.lps_to_ras(ras))  # diag(-1, -1, 1) is its own inverse
        curve["early_percent"] = curve["curve_percent"][self.kin.choice.early]
        curve["words"] = curve_words(curve, curve["early_percent"])
        return curve

    def evaluation_values(self, ras) -> dict:
        """The evaluation table's kinetics at a RAS point (the lesion centre): ``initial rise``, ``delayed phase``
        (words, "" without a late phase), ``PE %`` (the early phase's) and ``FTV mL`` (of the last ROI measured,
        NaN before one)."""
        curve = self._curve(ras)
        return {"initial rise": curve["initial"], "delayed phase": curve["delayed"] or "",
                "PE %": curve["early_percent"], "FTV mL": self.ftv["ftv_ml"] if self.ftv else float("nan")}

    def curve_at_peak(self, which: str = "coam") -> dict:
        """The curve at the peak of the session's ``which`` map (after an analysis)."""
        return self.curve_at_ras(self.session.peak_ras(which), f"{which} peak")

    def ftv_in_roi(self, roi_node) -> dict:
        """The FTV of a markups ROI's box (its RAS bounds): ``ftv_ml``, ``ser_volumes_ml`` and the thresholds;
        a box outside the volume, or without enhancing voxels, is an :class:`InputError` naming the ROI. A box
        just placed by one click (no extent yet) first gets :data:`BOX_MM` sides around its centre."""
        if roi_node.GetNumberOfControlPoints() and max(roi_node.GetSize()) == 0:
            roi_node.SetSize(BOX_MM, BOX_MM, BOX_MM)
        bounds = [0.0] * 6
        roi_node.GetRASBounds(bounds)
        if bounds[0] > bounds[1]:
            raise InputError(roi_node.GetName(), "the ROI has no extent")
        corners = [nodes.lps_to_ras(bounds[0::2]), nodes.lps_to_ras(bounds[1::2])]
        region = box_region(self.kin.grid, *corners, roi_node.GetName())
        ftv = self.kin.ftv(region, roi_node.GetName())
        self.ftv = ftv
        stale = self._nodes.pop("ftv_label", None)
        if stale is not None:
            self.scene.RemoveNode(stale)
        return ftv

    def _node(self, stem: str):
        """The scene node of map ``stem`` (pe_early, ser, ser_label, ftv_label), added on first use."""
        if stem not in self._nodes:
            image = self.kin.images()[stem]
            labelmap = stem.endswith("label")
            node = nodes.volume_node_from_image(self.scene, image, f"BreastCMSL {stem}", labelmap=labelmap)
            if labelmap:
                scene_kinetics.style_ser_label(self.scene, node)
            else:
                scene_kinetics.style_pe(node, display.heat_color_node(self.scene))
            self._nodes[stem] = node
        return self._nodes[stem]

    def show(self, slice_nodes, which: str = "ser_label", opacity: float = 0.6) -> object:
        """Overlay ``which`` (``pe_early`` as a heat map, ``ser_label`` or ``ftv_label`` in the SER colours, see
        :func:`legend`) over the reference phase on each slice view; returns the overlay's node."""
        if which not in ("pe_early", "ser_label", "ftv_label"):
            raise InputError("overlay", f"expected pe_early, ser_label or ftv_label, got {which!r}")
        if which != "pe_early" and which not in self.kin.images():
            raise InputError("overlay", "no late phase (SER)" if which == "ser_label" else "measure an FTV first")
        _, series, kind = self.session.inputs()
        reference = series[1] if kind == "phases" else series[0]
        node = self._node(which)
        foreground, label = (node, None) if which == "pe_early" else (None, node)
        display.show_layers(slice_nodes, reference, foreground, label, opacity, outline=False)
        return node
