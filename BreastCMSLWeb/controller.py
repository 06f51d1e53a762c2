"""The tab's bindings to the session: every control calls one :class:`Session` method and the page shows what the
session says, through the typed state (:mod:`.state`). User mistakes (:class:`InputError`) land in ``#error``
as one line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

from trame_server import Server
from trame_server.utils.typed_state import TypedState
from trame_slicer.core import VolumeWindowLevel

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.panel.jobs import POLL_INTERVAL_S, check
from BreastCMSLLib.panel.kinetics import ftv_text
from BreastCMSLLib.panel.models import models_in
from BreastCMSLLib.panel.roles import FIELDS, role_overrides
from BreastCMSLLib.panel.session import Session
from BreastCMSLLib.panel.text import evaluation_rows_text, evaluation_text

from .catalog import Catalog
from .errors import action, reports_errors
from .page import CHART
from .state import KineticsView, ResultView, TabState
from .views import TabViews

MAIN_VIEWS = ("view-axial", "view-coronal", "view-sagittal")
TRIGGERS = ("analyze", "cancel", "toggle_compare", "jump_to_peak", "reset_views", "place_centre", "evaluate",
            "apply_roles", "csv_text", "kinetics_place_point", "kinetics_peak", "kinetics_overlay",
            "kinetics_place_box")


class TabController:
    """One tab: its session, its views and the page's typed state (``self.data``)."""

    def __init__(self, server: Server, views: TabViews, session: Session, catalog: Catalog, device: str):
        self.server, self.views, self.session, self.catalog, self.device = server, views, session, catalog, device
        self.job = None
        self.folder: Path | None = None
        self.reference = None  # the loaded case's reference volume node
        self.click = None  # the observer tag on the lesion centre's point list
        self.kinetics_clicks: dict[str, int] = {}  # the observer tags on the kinetics point and box, by their role
        self.state = server.state
        self.typed = TypedState(self.state, TabState)
        self.data, names = self.typed.data, self.typed.name
        self.state.trame__title = "BreastCMSL"
        self.data.cases, self.data.models = catalog.cases(), self._models()
        if self.data.models:
            self.data.model_file = self.data.models[0]["file"]
        self.state.change(names.case_name)(lambda **_: self.load_case(self.data.case_name) if self.data.case_name
                                           else None)
        self.state.change(names.overlay_map, names.show_overlay, names.compare_left, names.compare_right)(
            lambda **_: self.show())
        self.state.change(names.window, names.level)(lambda **_: self.window_level(self.data.window, self.data.level))
        self.state.change(names.model_file)(lambda **_: self._prepare())
        views.set_visible(*MAIN_VIEWS)
        for name in TRIGGERS:
            server.trigger(name)(getattr(self, name))

    def _models(self) -> list[dict]:
        """The model store's entries (:func:`models_in`, as the Slicer module lists them) of the files resolving
        inside the models root, without their server paths."""
        listed = []
        for model in models_in(self.catalog.models):
            try:
                self.catalog.model(model["file"])
            except InputError:
                continue
            listed.append({key: value for key, value in model.items() if key != "path"})
        return listed

    def relative(self, message: str) -> str:
        """A message with the server's root folders left out of its paths (the page names files by case)."""
        for root in (self.catalog.data, self.catalog.models):
            message = message.replace(f"{root}{os.sep}", "")
        return message

    @property
    def which(self) -> str:
        return self.data.overlay_map

    # ---- inputs

    @action
    def load_case(self, name: str) -> None:
        """Load a case folder or a DICOM study (its role table shown) into the session."""
        self._cancel_job()
        self.session.stop_compare()
        self.data.result, self.data.roles, self.data.compare = ResultView(), [], False
        self.data.kinetics = KineticsView()
        self.data.role_overrides = dict.fromkeys(FIELDS, "")
        folder, kind = self.catalog.case(name)
        self.data.case_kind = kind
        self._load(folder, None)

    @action
    def apply_roles(self, fields: dict[str, str]) -> None:
        """Reload the DICOM study with the overrides typed under the role table (ROLES.json's keys)."""
        if self.data.case_kind != "dicom":
            raise InputError("roles", "choose a DICOM study first")
        folder, _ = self.catalog.case(self.data.case_name)
        self.data.result, self.data.role_overrides = ResultView(), fields
        self._load(folder, role_overrides(fields))

    def _load(self, folder: Path, roles: dict | None) -> None:
        """Load into the session; the views show the reference. On failure nothing stays chosen."""
        self.folder, self.data.loaded = None, False
        self.data.progress, self.data.stage = 0.0, ""
        if self.data.case_kind == "dicom":
            channels = next((m["in_channels"] for m in self.data.models if m["file"] == self.data.model_file), None)
            loaded = self.session.load_dicom_study(folder, roles, n_channels=channels)
            self.data.roles = [{**row, "series_number": str(row["series_number"])} for row in loaded["roles"]]
        else:
            loaded = self.session.load_case_folder(folder)
        self.folder, self.data.loaded, self.reference = folder, True, loaded["reference"]
        self.session.show(self.views.slice_nodes(*self.views.views), None)  # an earlier case's maps off
        low, high = VolumeWindowLevel.get_volume_scalar_range(self.reference)
        window, level = VolumeWindowLevel.min_max_to_window_level(
            *VolumeWindowLevel.get_volume_auto_min_max_range(self.reference))
        self.data.wl_low, self.data.wl_high, self.data.window, self.data.level = low, high, window, level
        self.views.set_visible(*MAIN_VIEWS)
        for view in self.views.views.values():
            view.set_background_volume_id(loaded["reference"].GetID())
            view.get_view_node().SetOrientationToDefault()
        self.views.fit()
        self._prepare()

    def _prepare(self) -> None:
        """Read and preprocess the loaded case for the chosen model in the worker now, before Analyze is clicked
        (:meth:`Session.prepare`); a problem with the inputs is Analyze's to report."""
        if self.folder is None or not self.data.model_file:
            return
        with contextlib.suppress(InputError):
            self.session.prepare(self.catalog.model(self.data.model_file), device=self.device)

    @reports_errors
    def window_level(self, window: float, level: float) -> None:
        """Window and level of the reference volume (the heat maps keep their fixed [0, 1] range)."""
        if self.reference is not None:
            self.session.set_window_level(window, level, self.reference)
            self._render()

    # ---- analysis

    @action
    def analyze(self) -> None:
        """Start the session's analysis of the loaded case with the chosen model; progress is polled."""
        if self.folder is None:
            raise InputError("case", "choose a case first")
        model = self.catalog.model(self.data.model_file)
        self.data.result = ResultView()
        self.job = self.session.analyze(model, device=self.device)
        self.data.busy, self.data.progress, self.data.stage = True, 0.0, "starting"
        asyncio.get_event_loop().create_task(self._poll(self.job))

    async def _poll(self, job) -> None:
        while job is self.job:
            await asyncio.sleep(POLL_INTERVAL_S)
            if job is self.job:
                self._collect(job)

    @reports_errors
    def _collect(self, job) -> None:
        """One poll of the job (:func:`~BreastCMSLLib.panel.jobs.check`); its result or its error once finished."""
        try:
            status = check(job)
        except Exception:
            self.job = None
            self.data.busy, self.data.stage = False, "failed"
            raise
        self.data.progress, self.data.stage = status.fraction, status.stage
        if not status.finished:
            return
        self.job, self.data.busy = None, False
        if status.error:
            raise InputError(None, status.error)
        self.data.result = ResultView.of(status.value)
        self.data.overlay_map, (self.data.compare_left, self.data.compare_right) = self.session.map_choices(
            self.data.overlay_map, (self.data.compare_left, self.data.compare_right))
        self.show()
        self.session.jump_to_peak(self.views.slice_nodes(*MAIN_VIEWS), self.which, centred=False)

    def _cancel_job(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.data.busy, self.data.progress, self.data.stage = False, 0.0, ""

    @action
    def cancel(self) -> None:
        """Cancel the running analysis: its worker is killed and nothing is added."""
        self._cancel_job()
        self.data.stage = "cancelled"

    # ---- display

    @reports_errors
    def show(self) -> None:
        """The chosen map (``#map-select``) over the reference with its labelmap outline, or the compare pair
        (``#compare-left`` | ``#compare-right``) side by side."""
        if not self.data.result.has_result:
            return
        if self.data.compare:
            self.session.compare(*self.views.slice_nodes("view-left", "view-axial"),
                                 pair=(self.data.compare_left, self.data.compare_right))
        else:  # the reference alone when the overlay is off
            self.session.show(self.views.slice_nodes(*MAIN_VIEWS), self.which if self.data.show_overlay else None)
        self._render()

    @action
    def toggle_compare(self) -> None:
        """The compare pair side by side on axial views kept in step, or back to the three views."""
        if not self.data.result.has_result:
            raise InputError("Compare", "analyze a case first")
        self.data.compare = not self.data.compare
        if self.data.compare:
            self.views.set_visible("view-left", "view-axial")
            self.views.views["view-left"].fit_view_to_content()
        else:
            self.session.stop_compare()
            self.views.set_visible(*MAIN_VIEWS)
            self.views.views["view-axial"].get_view_node().SetOrientationToDefault()
        self.show()

    @action
    def jump_to_peak(self) -> None:
        """Centre the views on the shown map's peak."""
        if self.data.compare:
            self.show()
        else:
            self.session.jump_to_peak(self.views.slice_nodes(*MAIN_VIEWS), self.which)
        self._render()

    @action
    def reset_views(self) -> None:
        """Frame the views on the reference volume (all of it, centred); with a result, each view on the slice
        through the shown map's peak (compare: the right view framed as the left one)."""
        self.views.fit()
        if self.data.result.has_result and self.data.compare:
            self.show()
        elif self.data.result.has_result:
            self.session.jump_to_peak(self.views.slice_nodes(*MAIN_VIEWS), self.which, centred=False)
        self._render()

    def _render(self) -> None:
        for view in self.views.views.values():
            view.schedule_render()

    # ---- lesion centre and evaluation

    @action
    def place_centre(self) -> None:
        """The next click on a view places the lesion centre there."""
        if not self.data.result.has_result:
            raise InputError("Place centre", "analyze a case first")
        centre = self.session.centre_to_place()
        if self.click is None:  # observed once per tab: the click that defines the centre's point
            self.click = centre.AddObserver(centre.PointPositionDefinedEvent, self._clicked)
        self.views.app.markups_logic.place_node(centre)
        self.data.result.placing = True

    def _clicked(self, centre, _event) -> None:
        """The clicked point is the session's lesion centre (the point the session sets again is no click)."""
        if not self.data.result.placing:
            return
        ras = [0.0, 0.0, 0.0]
        centre.GetNthControlPointPositionWorld(0, ras)
        self._set_centre(ras)

    @action
    def _set_centre(self, ras: list[float]) -> None:
        self.views.app.markups_logic.disable_place_mode()
        self.data.result.placing = False
        self.session.set_lesion_centre(ras)
        self.data.result.centre = ", ".join(f"{v:.1f}" for v in ras)
        self._render()

    @action
    def evaluate(self) -> None:
        """Distances from the centre to the peaks, appended to the table with the running mean ± std."""
        summary = self.session.evaluate()["summary"]
        self.data.rows = evaluation_rows_text(self.session.evaluation_rows())
        self.data.summary = evaluation_text(summary)

    # ---- kinetics

    def _place(self, role: str, node, defined) -> None:
        """Place mode for the kinetics ``node`` (``role``: point or box); ``defined`` gets the node once placed
        and, for the box, again after each drag of its handles."""
        if role not in self.kinetics_clicks:  # observed once per tab
            self.kinetics_clicks[role] = node.AddObserver(node.PointPositionDefinedEvent, defined)
            if role == "box":
                node.AddObserver(node.PointEndInteractionEvent, defined)
        self.views.app.markups_logic.place_node(node)
        self.data.kinetics.placing = role

    @action
    def kinetics_place_point(self) -> None:
        """The next click on a view is the point whose curve is drawn."""
        self.session.kinetics()  # refuses subtractions before the click
        self._place("point", self.session.kinetics_point_to_place(), self._point_clicked)

    def _point_clicked(self, node, _event) -> None:
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(0, ras)
        self._curve_at_point(ras)

    @action
    def _curve_at_point(self, ras: list[float]) -> None:
        self.views.app.markups_logic.disable_place_mode()
        self.data.kinetics.placing = ""
        curve = self.session.kinetics().curve_at_ras(ras, "point")
        self._show_curve(curve, "point " + ", ".join(f"{v:.1f}" for v in ras) + " (RAS mm)")

    @action
    def kinetics_peak(self) -> None:
        """The curve at the chosen map's peak."""
        which = self.data.kinetics.peak_map
        self._show_curve(self.session.kinetics().curve_at_peak(which), f"{which} peak")

    def _show_curve(self, curve: dict, source: str) -> None:
        k = self.data.kinetics
        self.data.kinetics = KineticsView.of(curve, source, *CHART, ftv=k.ftv, peak_map=k.peak_map,
                                             overlay=k.overlay)
        self._render()

    @action
    def kinetics_overlay(self) -> None:
        """The chosen kinetics map (PE, SER label, FTV label) over the reference, in the SER colours."""
        self.session.kinetics().show(self.views.slice_nodes(*MAIN_VIEWS), self.data.kinetics.overlay)
        self._render()

    @action
    def kinetics_place_box(self) -> None:
        """The next box drawn on a view is the FTV's region."""
        self.session.kinetics()
        self._place("box", self.session.kinetics_box_to_place(), self._box_drawn)

    @action
    def _box_drawn(self, roi, _event) -> None:
        self.views.app.markups_logic.disable_place_mode()
        self.data.kinetics.placing = ""
        section = self.session.kinetics()
        self.data.kinetics.ftv = ftv_text(section.ftv_in_roi(roi))
        self.data.kinetics.overlay = "ftv_label"
        section.show(self.views.slice_nodes(*MAIN_VIEWS), "ftv_label")
        self._render()

    def csv_text(self) -> str:
        """The evaluation table as CSV text (for the page's download)."""
        with tempfile.TemporaryDirectory(prefix="BreastCMSL-csv-") as folder:
            try:
                path = self.session.save_table_csv(Path(folder) / "evaluation.csv")
            except InputError as err:
                with self.state:
                    self.data.error = self.relative(str(err))
                return ""
            return path.read_text()
