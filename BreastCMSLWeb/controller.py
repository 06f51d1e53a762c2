"""The tab's state and its bindings to the session: every control calls one :class:`Session` method and the
page shows what the session says. User mistakes (:class:`InputError`) land in ``#error`` as one line."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from trame_server import Server
from trame_slicer.core import VolumeWindowLevel

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.panel.models import models_in
from BreastCMSLLib.panel.session import Session
from BreastCMSLLib.panel.text import evaluation_rows_text, evaluation_text, result_text

from .catalog import Catalog
from .errors import action, reports_errors
from .roleform import ROLE_KEYS, overrides
from .views import TabViews

MAIN_VIEWS = ("view-axial", "view-coronal", "view-sagittal")
POLL_S = 0.2
NO_RESULT = {"has_result": False, "probability": "", "prediction": "", "model_label": "", "result_note": "",
             "centre": "", "placing": False}


class TabController:
    """One tab: its session, its views and the page's state."""

    def __init__(self, server: Server, views: TabViews, session: Session, catalog: Catalog, device: str):
        self.server, self.views, self.session, self.catalog, self.device = server, views, session, catalog, device
        self.job = None
        self.folder: Path | None = None
        self.reference = None  # the loaded case's reference volume node
        self.click = None  # the observer tag on the lesion centre's point list
        self.state = server.state
        self.state.update({
            "trame__title": "BreastCMSL", "cases": catalog.cases(), "case_name": "", "case_kind": "",
            "loaded": False, "roles": [], "role_overrides": dict.fromkeys(ROLE_KEYS, ""), "models": self._models(),
            "model_file": "", "busy": False,
            "progress": 0.0, "stage": "", "error": "", "show_cam": False, "show_overlay": True, "compare": False,
            "rows": [], "summary": "", "window": 1.0, "level": 0.5, "wl_low": 0.0, "wl_high": 1.0, **NO_RESULT,
        })
        if self.state.models:
            self.state.model_file = self.state.models[0]["file"]
        self.state.change("case_name")(lambda case_name, **_: self.load_case(case_name) if case_name else None)
        self.state.change("show_cam", "show_overlay")(lambda **_: self.show())
        self.state.change("window", "level")(lambda window, level, **_: self.window_level(window, level))
        views.set_visible(*MAIN_VIEWS)
        for name in ("analyze", "cancel", "toggle_compare", "jump_to_peak", "place_centre", "evaluate",
                     "apply_roles", "csv_text"):
            server.trigger(name)(getattr(self, name))

    def _models(self) -> list[dict]:
        """The models under the models root (files resolving inside it), labelled with name, sha and flags."""
        listed = []
        for model in models_in(self.catalog.models):
            name = Path(model["path"]).name
            try:
                self.catalog.model(name)
            except InputError:
                continue
            listed.append({"file": name, "label": model["title"], "channels": model["in_channels"]})
        return listed

    def relative(self, message: str) -> str:
        """A message with the server's root folders left out of its paths (the page names files by case)."""
        for root in (self.catalog.data, self.catalog.models):
            message = message.replace(f"{root}{os.sep}", "")
        return message

    @property
    def which(self) -> str:
        return "cam" if self.state.show_cam else "coam"

    # ---- inputs

    @action
    def load_case(self, name: str) -> None:
        """Load a case folder or a DICOM study (its role table shown) into the session."""
        self._cancel_job()
        self.session.stop_compare()
        self.state.update({**NO_RESULT, "roles": [], "role_overrides": dict.fromkeys(ROLE_KEYS, ""),
                           "compare": False})
        folder, kind = self.catalog.case(name)
        self.state.case_kind = kind
        self._load(folder, None)

    @action
    def apply_roles(self, fields: dict[str, str]) -> None:
        """Reload the DICOM study with the overrides typed under the role table (ROLES.json's keys)."""
        if self.state.case_kind != "dicom":
            raise InputError("roles", "choose a DICOM study first")
        folder, _ = self.catalog.case(self.state.case_name)
        self.state.update({**NO_RESULT, "role_overrides": fields})
        self._load(folder, overrides(fields))

    def _load(self, folder: Path, roles: dict | None) -> None:
        """Load into the session; the views show the reference. On failure nothing stays chosen."""
        self.folder, self.state.loaded = None, False
        self.state.update({"progress": 0.0, "stage": ""})
        if self.state.case_kind == "dicom":
            channels = next((m["channels"] for m in self.state.models if m["file"] == self.state.model_file), None)
            loaded = self.session.load_dicom_study(folder, roles, n_channels=channels)
            self.state.roles = [{**row, "series_number": str(row["series_number"])} for row in loaded["roles"]]
        else:
            loaded = self.session.load_case_folder(folder)
        self.folder, self.state.loaded, self.reference = folder, True, loaded["reference"]
        self.session.show(self.views.slice_nodes(*self.views.views), None)  # an earlier case's maps off
        low, high = VolumeWindowLevel.get_volume_scalar_range(self.reference)
        window, level = VolumeWindowLevel.min_max_to_window_level(
            *VolumeWindowLevel.get_volume_auto_min_max_range(self.reference))
        self.state.update({"wl_low": low, "wl_high": high, "window": window, "level": level})
        self.views.set_visible(*MAIN_VIEWS)
        for view in self.views.views.values():
            view.set_background_volume_id(loaded["reference"].GetID())
            view.get_view_node().SetOrientationToDefault()
        self.views.fit()

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
        model = self.catalog.model(self.state.model_file)
        self.state.update(NO_RESULT)
        self.job = self.session.analyze(model, device=self.device)
        self.state.update({"busy": True, "progress": 0.0, "stage": "starting"})
        asyncio.get_event_loop().create_task(self._poll(self.job))

    async def _poll(self, job) -> None:
        while job is self.job:
            await asyncio.sleep(POLL_S)
            if job is not self.job:
                return
            with self.state:
                self.state.progress, self.state.stage = job.progress
            self._collect(job)

    @reports_errors
    def _collect(self, job) -> None:
        try:
            result = job.poll()
        except Exception:
            self.job = None
            self.state.update({"busy": False, "stage": "failed"})
            raise
        if result is None:
            return
        self.job = None
        text = result_text(result)
        self.state.update({
            "busy": False, "progress": 1.0, "stage": "done", "has_result": True,
            "probability": text["probability"], "prediction": text["prediction"], "model_label": text["model"],
            "result_note": text["disclaimer"],
        })
        self.show()
        self.session.jump_to_peak(self.views.slice_nodes(*MAIN_VIEWS), self.which)

    def _cancel_job(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.state.update({"busy": False, "progress": 0.0, "stage": ""})

    @action
    def cancel(self) -> None:
        """Cancel the running analysis: its worker is killed and nothing is added."""
        self._cancel_job()
        self.state.stage = "cancelled"

    # ---- display

    @reports_errors
    def show(self) -> None:
        """The chosen map (COAM, or CAM with ``#show-cam``) over the reference with its labelmap outline."""
        if not self.state.has_result:
            return
        if self.state.compare:
            self.session.compare(*self.views.slice_nodes("view-cam", "view-axial"))
        else:  # the reference alone when the overlay is off
            self.session.show(self.views.slice_nodes(*MAIN_VIEWS), self.which if self.state.show_overlay else None)
        self._render()

    @action
    def toggle_compare(self) -> None:
        """CAM | COAM side by side on axial views kept in step, or back to the three views."""
        if not self.state.has_result:
            raise InputError("Compare", "analyze a case first")
        self.state.compare = not self.state.compare
        if self.state.compare:
            self.views.set_visible("view-cam", "view-axial")
            self.views.views["view-cam"].fit_view_to_content()
        else:
            self.session.stop_compare()
            self.views.set_visible(*MAIN_VIEWS)
            self.views.views["view-axial"].get_view_node().SetOrientationToDefault()
        self.show()

    @action
    def jump_to_peak(self) -> None:
        """Centre the views on the shown map's peak."""
        if self.state.compare:
            self.show()
        else:
            self.session.jump_to_peak(self.views.slice_nodes(*MAIN_VIEWS), self.which)
        self._render()

    def _render(self) -> None:
        for view in self.views.views.values():
            view.schedule_render()

    # ---- lesion centre and evaluation

    @action
    def place_centre(self) -> None:
        """The next click on a view places the lesion centre there."""
        if not self.state.has_result:
            raise InputError("Place centre", "analyze a case first")
        centre = self.session.centre_node()
        centre.RemoveAllControlPoints()
        if self.click is None:  # observed once per tab: the click that defines the centre's point
            self.click = centre.AddObserver(centre.PointPositionDefinedEvent, self._clicked)
        self.views.app.markups_logic.place_node(centre)
        self.state.placing = True

    def _clicked(self, centre, _event) -> None:
        """The clicked point is the session's lesion centre."""
        ras = [0.0, 0.0, 0.0]
        centre.GetNthControlPointPositionWorld(0, ras)
        self._set_centre(ras)

    @action
    def _set_centre(self, ras: list[float]) -> None:
        self.views.app.markups_logic.disable_place_mode()
        self.session.set_lesion_centre(ras)
        self.state.update({"placing": False, "centre": ", ".join(f"{v:.1f}" for v in ras)})
        self._render()

    @action
    def evaluate(self) -> None:
        """Distances from the centre to the peaks, appended to the table with the running mean ± std."""
        summary = self.session.evaluate()["summary"]
        self.state.rows = evaluation_rows_text(self.session.evaluation_rows())
        self.state.summary = evaluation_text(summary)

    def csv_text(self) -> str:
        """The evaluation table as CSV text (for the page's download)."""
        with tempfile.TemporaryDirectory(prefix="BreastCMSL-csv-") as folder:
            try:
                path = self.session.save_table_csv(Path(folder) / "evaluation.csv")
            except InputError as err:
                with self.state:
                    self.state.error = self.relative(str(err))
                return ""
            return path.read_text()
