"""The page: controls on the left (stable element ids, see the README), the slice views on the right."""

from __future__ import annotations

from trame.ui.html import DivLayout
from trame.widgets import html
from trame_server import Server

from .views import TabViews

PANEL = "width:380px;flex:none;overflow:auto;padding:10px;font:14px sans-serif;background:#f4f4f4"
VIEW = "flex:1;position:relative;min-width:0;min-height:0"
TAG = ("position:absolute;top:4px;left:6px;color:#fff;font:12px sans-serif;pointer-events:none;"
       "text-shadow:0 0 2px #000;z-index:1")
ROW = "display:flex;gap:6px;flex-wrap:wrap;margin:6px 0"


def _view(views: TabViews, element_id: str, label: str, **kwargs) -> None:
    with html.Div(id=element_id, style=VIEW, **kwargs):
        html.Div(label, style=TAG)
        views.template(element_id)


def _inputs() -> None:
    html.Label("Case", for_="case-select", style="display:block;font-weight:bold")
    with html.Select(id="case-select", v_model=("case_name",), style="width:100%", disabled=("busy",)):
        html.Option("choose a case", value="", disabled=True)
        html.Option("{{ c.name }}{{ c.kind === 'dicom' ? ' (DICOM study)' : '' }}", v_for="c in cases",
                    key="c.name", value=("c.name",))
    with html.Table(id="role-table", v_if="roles.length", style="width:100%;font-size:12px;margin-top:6px"):
        with html.Tr():
            for title in ("role", "series", "phase", "description", "confidence"):
                html.Th(title, style="text-align:left")
        with html.Tr(v_for="r in roles", key="r.role", title=("r.reason",)):
            html.Td("{{ r.role }}")
            html.Td("{{ r.series_number }}")
            html.Td("{{ r.phase === r.series_number ? '–' : r.phase }}")
            html.Td("{{ r.description }}")
            html.Td("{{ r.confidence }}")
    with html.Div(v_if="case_kind === 'dicom'", style="font-size:12px"):
        html.Div("Override roles (series number, UID or number:phase; post and sub: several, in order):")
        for key in ("t1", "pre", "post", "sub"):
            with html.Label(style="display:inline-block;margin-right:6px"):
                html.Span(key)
                html.Input(id=f"role-{key}", size=6 if key in ("t1", "pre") else 16,
                           value=(f"role_overrides.{key}",),
                           change=f"role_overrides = {{...role_overrides, {key}: $event.target.value}}")
        html.Button("Apply roles", id="apply-roles", click="trigger('apply_roles', [role_overrides])",
                    disabled=("busy",))
    html.Label("Model", for_="model-select", style="display:block;font-weight:bold;margin-top:8px")
    with html.Select(id="model-select", v_model=("model_file",), style="width:100%", disabled=("busy",)):
        html.Option("{{ m.label }}", v_for="m in models", key="m.file", value=("m.file",))


def _analysis() -> None:
    with html.Div(style=ROW):
        html.Button("Analyze", id="analyze", click="trigger('analyze')", disabled=("busy || !loaded",))
        html.Button("Cancel", id="cancel", click="trigger('cancel')", disabled=("!busy",))
    with html.Div(id="progress", style="display:flex;gap:6px;align-items:center"):
        html.Progress(value=("progress",), max=1, style="flex:1")
        html.Span("{{ stage }}", id="stage")
    html.Div("{{ error }}", id="error", style="color:#c00;min-height:1.2em;word-break:break-word")
    with html.Div(v_show="has_result", style="margin:6px 0"):
        with html.Div("Probability "):
            html.B("{{ probability }}", id="probability")
        with html.Div("Prediction "):
            html.B("{{ prediction }}", id="prediction")
        html.Div("Model {{ model_label }}", id="model")
        html.Div("{{ result_note }}", style="color:#c00")


def _display() -> None:
    with html.Div(style=ROW):
        with html.Label():
            html.Input(type="checkbox", id="show-overlay", v_model=("show_overlay",), disabled=("!has_result",))
            html.Span("overlay")
        with html.Label():
            html.Input(type="checkbox", id="show-cam", v_model=("show_cam",), disabled=("!has_result",))
            html.Span("CAM instead of COAM")
        html.Button("{{ compare ? 'Three views' : 'Compare CAM | COAM' }}", id="compare",
                    click="trigger('toggle_compare')", disabled=("!has_result",))
        html.Button("Jump to peak", id="jump-peak", click="trigger('jump_to_peak')", disabled=("!has_result",))
    with html.Div(style=ROW + ";font-size:12px", v_show="loaded"):
        for key, low, high in (("window", "1", "wl_high - wl_low"), ("level", "wl_low", "wl_high")):
            with html.Label():
                html.Span(key)
                html.Input(type="range", id=key, v_model_number=(key,), min=(low,), max=(high,),
                           step=("(wl_high - wl_low) / 200",), style="width:120px")
    with html.Div(style=ROW):
        html.Button("{{ placing ? 'Click a view…' : 'Place lesion centre' }}", id="place-centre",
                    click="trigger('place_centre')", disabled=("!has_result",))
        html.Button("Evaluate", id="evaluate", click="trigger('evaluate')", disabled=("!centre",))
    html.Div("Centre (RAS mm): {{ centre }}", id="centre", v_show="centre")


def _evaluation() -> None:
    with html.Table(id="evaluation-table", style="width:100%;font-size:12px;margin-top:6px"):
        with html.Tr():
            for title in ("case", "probability", "COAM mm", "CAM mm"):
                html.Th(title, style="text-align:left")
        with html.Tr(v_for="(r, i) in rows", key="i"):
            for key in ("case", "probability", "COAM mm", "CAM mm"):
                html.Td(f"{{{{ r['{key}'] }}}}")
    html.Div("{{ summary }}", id="evaluation-summary")
    html.Button("Download CSV", id="download-csv", disabled=("!rows.length",),
                click="utils.download('breastcmsl_evaluation.csv', trigger('csv_text'), 'text/csv')")


def build_page(server: Server, views: TabViews) -> DivLayout:
    """The whole page of one tab."""
    with DivLayout(server, style="display:flex;height:100vh;margin:0") as layout:
        with html.Div(style=PANEL):
            html.H3("BreastCMSL", style="margin:0 0 4px 0")
            html.Div("Research software, not for diagnosis.", id="disclaimer", style="color:#c00;font-weight:bold")
            _inputs()
            _analysis()
            _display()
            _evaluation()
        with html.Div(style="flex:1;display:flex;gap:2px;background:#000;min-width:0"):
            _view(views, "view-cam", "Axial · CAM", v_show="compare")
            _view(views, "view-axial", "Axial · {{ compare || !show_cam ? 'COAM' : 'CAM' }}")
            with html.Div(v_show="!compare", style="flex:1;display:flex;flex-direction:column;gap:2px"):
                _view(views, "view-coronal", "Coronal")
                _view(views, "view-sagittal", "Sagittal")
    return layout
