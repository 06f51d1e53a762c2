"""The page: controls on the left (stable element ids, see the README), the slice views on the right. Every
state key comes from the tab's typed state (:class:`.state.TabState`): ``n.<field>`` is its key in trame."""

from __future__ import annotations

import json

from trame.ui.html import DivLayout
from trame.widgets import html
from trame_client.widgets.core import HtmlElement
from trame_server import Server

from BreastCMSLLib.panel.roles import FIELDS
from BreastCMSLLib.panel.text import EVALUATION_COLUMNS, GENERAL_DISCLAIMER, MAP_LABELS

from .state import TabState
from .views import TabViews

PANEL = "width:380px;flex:none;overflow:auto;padding:10px;font:14px sans-serif;background:#f4f4f4"
VIEW = "flex:1;position:relative;min-width:0;min-height:0"
TAG = ("position:absolute;top:4px;left:6px;color:#fff;font:12px sans-serif;pointer-events:none;"
       "text-shadow:0 0 2px #000;z-index:1")
ROW = "display:flex;gap:6px;flex-wrap:wrap;margin:6px 0"
LABELS = json.dumps(MAP_LABELS)  # a JavaScript object: map name -> label
CHART = (340, 170)  # the kinetics chart's SVG box (pixels)
OVERLAYS = (("ser_label", "SER label"), ("pe_early", "PE (early, %)"), ("ftv_label", "FTV label"))


class _SvgShape(HtmlElement):
    """An SVG shape element (trame's html widgets stop at <svg>)."""

    def __init__(self, tag: str, **kwargs):
        super().__init__(tag, **kwargs)
        self.props += ["points", "x", "y", "x1", "x2", "y1", "y2", "width", "height", "fill", "stroke",
                       ("stroke_width", "stroke-width"), ("text_anchor", "text-anchor"), ("font_size", "font-size")]


def _view(views: TabViews, element_id: str, label: str, **kwargs) -> None:
    with html.Div(id=element_id, style=VIEW, **kwargs):
        html.Div(label, style=TAG)
        views.template(element_id)


def _inputs(n: TabState) -> None:
    html.Label("Case", for_="case-select", style="display:block;font-weight:bold")
    with html.Select(id="case-select", v_model=(n.case_name,), style="width:100%", disabled=(n.busy,)):
        html.Option("choose a case", value="", disabled=True)
        html.Option("{{ c.name }}{{ c.kind === 'dicom' ? ' (DICOM study)' : '' }}", v_for=f"c in {n.cases}",
                    key="c.name", value=("c.name",))
    with html.Table(id="role-table", v_if=f"{n.roles}.length", style="width:100%;font-size:12px;margin-top:6px"):
        with html.Tr():
            for title in ("role", "series", "phase", "description", "confidence"):
                html.Th(title, style="text-align:left")
        with html.Tr(v_for=f"r in {n.roles}", key="r.role", title=("r.reason",)):
            html.Td("{{ r.role }}")
            html.Td("{{ r.series_number }}")
            html.Td("{{ r.phase === r.series_number ? '–' : r.phase }}")
            html.Td("{{ r.description }}")
            html.Td("{{ r.confidence }}")
    with html.Div(v_if=f"{n.case_kind} === 'dicom'", style="font-size:12px"):
        html.Div("Override roles (series number, UID or number:phase; post and sub: several, in order):")
        for key in FIELDS:
            with html.Label(style="display:inline-block;margin-right:6px"):
                html.Span(key)
                html.Input(id=f"role-{key}", size=6 if key in ("t1", "pre") else 16,
                           value=(f"{n.role_overrides}.{key}",),
                           change=f"{n.role_overrides} = {{...{n.role_overrides}, {key}: $event.target.value}}")
        html.Button("Apply roles", id="apply-roles", click=f"trigger('apply_roles', [{n.role_overrides}])",
                    disabled=(n.busy,))
    html.Label("Model", for_="model-select", style="display:block;font-weight:bold;margin-top:8px")
    with html.Select(id="model-select", v_model=(n.model_file,), style="width:100%", disabled=(n.busy,)):
        html.Option("{{ m.title }}", v_for=f"m in {n.models}", key="m.file", value=("m.file",))


def _analysis(n: TabState) -> None:
    r = n.result
    with html.Div(style=ROW):
        html.Button("Analyze", id="analyze", click="trigger('analyze')", disabled=(f"{n.busy} || !{n.loaded}",))
        html.Button("Cancel", id="cancel", click="trigger('cancel')", disabled=(f"!{n.busy}",))
    with html.Div(id="progress", style="display:flex;gap:6px;align-items:center"):
        html.Progress(value=(n.progress,), max=1, style="flex:1")
        html.Span(f"{{{{ {n.stage} }}}}", id="stage")
    html.Div(f"{{{{ {n.error} }}}}", id="error", style="color:#c00;min-height:1.2em;word-break:break-word")
    with html.Div(v_show=r.has_result, style="margin:6px 0"):
        html.Div(f"{{{{ {r.applicability} }}}}", id="applicability",
                 style=(f"{r.outside} ? 'color:#c00;font-weight:bold' : 'font-size:12px'",))
        greyed = (f"{r.outside} ? 'color:#999' : ''",)  # outside the training domain: an extrapolation
        with html.Div("Probability ", style=greyed):
            html.B(f"{{{{ {r.probability} }}}}", id="probability")
            html.Span(f"{{{{ {r.calibration} }}}}", id="calibration", style="margin-left:4px")
            html.Span(f" ({{{{ {r.cos_theta} }}}})")
        html.Div(f"{{{{ {r.operating_line} }}}}", id="operating-line", style="font-size:12px")
        with html.Div("Prediction ", style=greyed):
            html.B(f"{{{{ {r.prediction} }}}}", id="prediction")
        html.Div(f"Model {{{{ {r.model} }}}}", id="model")
        html.Div(f"{{{{ {r.disclaimer} }}}}", style="color:#c00")


def _map_select(element_id: str, key: str, n: TabState, disabled) -> None:
    """A choice among the result's maps (COAM, CAM and, when the result has it, fine)."""
    with html.Select(id=element_id, v_model=(key,), disabled=disabled):
        html.Option("{{ m.label }}", v_for=f"m in {n.result.maps}", key="m.value", value=("m.value",))


def _display(n: TabState) -> None:
    r = n.result
    no_result = (f"!{r.has_result}",)
    with html.Div(style=ROW):
        with html.Label():
            html.Input(type="checkbox", id="show-overlay", v_model=(n.show_overlay,), disabled=no_result)
            html.Span("overlay")
        with html.Label():
            html.Span("map ")
            _map_select("map-select", n.overlay_map, n, no_result)
        html.Button("Jump to peak", id="jump-peak", click="trigger('jump_to_peak')", disabled=no_result)
        html.Button("Reset views", id="reset-views", click="trigger('reset_views')", disabled=(f"!{n.loaded}",))
    with html.Div(style=ROW):
        _map_select("compare-left", n.compare_left, n, no_result)
        html.Span("|")
        _map_select("compare-right", n.compare_right, n, no_result)
        html.Button(f"{{{{ {n.compare} ? 'Three views' : 'Compare' }}}}", id="compare",
                    click="trigger('toggle_compare')", disabled=no_result)
    span = f"{n.wl_high} - {n.wl_low}"
    with html.Div(style=ROW + ";font-size:12px", v_show=n.loaded):
        for label, key, low, high in (("window", n.window, "1", span), ("level", n.level, n.wl_low, n.wl_high)):
            with html.Label():
                html.Span(label)
                html.Input(type="range", id=label, v_model_number=(key,), min=(low,), max=(high,),
                           step=(f"({span}) / 200",), style="width:120px")
    with html.Div(style=ROW):
        html.Button(f"{{{{ {r.placing} ? 'Click a view…' : 'Place lesion centre' }}}}", id="place-centre",
                    click="trigger('place_centre')", disabled=no_result)
        html.Button("Evaluate", id="evaluate", click="trigger('evaluate')", disabled=(f"!{r.centre}",))
    html.Div(f"Centre (RAS mm): {{{{ {r.centre} }}}}", id="centre", v_show=r.centre)


def _evaluation(n: TabState) -> None:
    with html.Table(id="evaluation-table", style="width:100%;font-size:12px;margin-top:6px"):
        with html.Tr():
            for title in EVALUATION_COLUMNS:
                html.Th(title, style="text-align:left")
        with html.Tr(v_for=f"(row, i) in {n.rows}", key="i"):
            for key in EVALUATION_COLUMNS:
                html.Td(f"{{{{ row['{key}'] }}}}")
    html.Div(f"{{{{ {n.summary} }}}}", id="evaluation-summary")
    html.Button("Download CSV", id="download-csv", disabled=(f"!{n.rows}.length",),
                click="utils.download('breastcmsl_evaluation.csv', trigger('csv_text'), 'text/csv')")


def _kinetics(n: TabState) -> None:
    """The Kinetics section: the curve at a clicked point or a map's peak (drawn, with its classes in words), the
    PE/SER overlays with the SER legend, and the FTV of a drawn box."""
    k, no_case, no_result = n.kinetics, (f"!{n.loaded} || {n.busy}",), (f"!{n.result.has_result}",)
    width, height = CHART
    with html.Details(id="kinetics", style="margin-top:8px"):
        html.Summary("Kinetics", style="font-weight:bold;cursor:pointer")
        with html.Div(style=ROW):
            html.Button(f"{{{{ {k.placing} === 'point' ? 'Click a view…' : 'Curve at point' }}}}",
                        id="kinetics-point", click="trigger('kinetics_place_point')", disabled=no_case)
            with html.Select(id="kinetics-peak-map", v_model=(k.peak_map,), disabled=no_result):
                html.Option("{{ m.label }}", v_for=f"m in {n.result.maps}", key="m.value", value=("m.value",))
            html.Button("Curve at peak", id="kinetics-peak", click="trigger('kinetics_peak')", disabled=no_result)
        with html.Div(v_show=k.points):
            html.Div(f"{{{{ {k.source} }}}}", id="kinetics-source", style="font-size:12px")
            html.Div(f"{{{{ {k.words} }}}}", id="kinetics-class", style="font-weight:bold")
            with html.Svg(id="kinetics-chart", width=width, height=height, style="background:#fff"):
                _SvgShape("line", x1=28, x2=width - 28, y1=(k.zero_y,), y2=(k.zero_y,), stroke="#999")
                _SvgShape("line", x1=28, x2=28, y1=28, y2=height - 28, stroke="#999")
                _SvgShape("polyline", points=(k.points,), fill="none", stroke="#c0392b", stroke_width=2)
                _SvgShape("text", children=f"{{{{ {k.p_max} }}}}", x=2, y=24, font_size=10)
                _SvgShape("text", children=f"{{{{ {k.p_min} }}}}", x=2, y=height - 20, font_size=10)
                _SvgShape("text", children=f"{{{{ {k.t_max} }}}}", x=width - 28, y=height - 6, font_size=10,
                          text_anchor="middle")
                _SvgShape("text", children="enhancement (%) over time after injection (s)", x=width / 2,
                          y=height - 6, font_size=10, text_anchor="middle")
        with html.Div(style=ROW):
            with html.Select(id="kinetics-overlay", v_model=(k.overlay,), disabled=no_case):
                for value, label in OVERLAYS:
                    html.Option(label, value=value)
            html.Button("Show overlay", id="kinetics-show", click="trigger('kinetics_overlay')", disabled=no_case)
        with html.Div(id="kinetics-legend", style="font-size:12px"), html.Div(v_for=f"e in {k.legend}", key="e.hex"):
            html.Span("■ ", style=("'color:' + e.hex",))
            html.Span("{{ e.text }}")
        with html.Div(style=ROW):
            html.Button(f"{{{{ {k.placing} === 'box' ? 'Click the lesion…' : 'Draw FTV box' }}}}",
                        id="kinetics-box", click="trigger('kinetics_place_box')", disabled=no_case)
        html.Div("One click places a box; drag its handles to fit the lesion.", style="font-size:12px")
        html.Div(f"{{{{ {k.ftv} }}}}", id="kinetics-ftv")


def build_page(server: Server, views: TabViews, n: TabState) -> DivLayout:
    """The whole page of one tab; ``n``: the typed state's names (``TypedState.name``)."""
    with DivLayout(server, style="display:flex;height:100vh;margin:0") as layout:
        with html.Div(style=PANEL):
            html.H3("BreastCMSL", style="margin:0 0 4px 0")
            html.Div(GENERAL_DISCLAIMER, id="disclaimer", style="color:#c00;font-weight:bold")
            _inputs(n)
            _analysis(n)
            _display(n)
            _kinetics(n)
            _evaluation(n)
        with html.Div(style="flex:1;display:flex;gap:2px;background:#000;min-width:0"):
            _view(views, "view-left", f"Axial · {{{{ {LABELS}[{n.compare_left}] }}}}", v_show=n.compare)
            _view(views, "view-axial", f"Axial · {{{{ {LABELS}[{n.compare} ? {n.compare_right} : {n.overlay_map}] }}}}")
            with html.Div(v_show=f"!{n.compare}", style="flex:1;display:flex;flex-direction:column;gap:2px"):
                _view(views, "view-coronal", "Coronal")
                _view(views, "view-sagittal", "Sagittal")
    return layout
