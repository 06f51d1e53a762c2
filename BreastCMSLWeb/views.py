"""The slice views of one tab: axial, coronal, sagittal and a second axial for the left side of the comparison.

Views are trame-slicer slice views streamed as images (trame-rca); each is placed in the page inside a
``div`` with a stable id (``view-axial``, ...), so tests and users' scripts find it.
"""

from __future__ import annotations

from dataclasses import dataclass

import vtk
from trame.widgets import client
from trame_server import Server
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import SliceView, ViewLayoutDefinition

# element id -> (singleton tag, orientation); "view-left" is the left half of the side-by-side comparison (the
# right half is "view-axial")
VIEWS = {
    "view-axial": ("Red", "Axial"),
    "view-coronal": ("Green", "Coronal"),
    "view-sagittal": ("Yellow", "Sagittal"),
    "view-left": ("CompareLeft", "Axial"),
}


@dataclass
class TabViews:
    """The tab's slice views by element id."""

    server: Server
    app: SlicerApp
    views: dict[str, SliceView]

    def slice_nodes(self, *ids: str) -> list:
        """The MRML slice nodes of the given views."""
        return [self.views[i].get_view_node() for i in ids]

    def template(self, element_id: str) -> None:
        """Place the view's streamed image here (inside the caller's ``with`` block)."""
        client.ServerTemplate(name=self.server.translator.translate_key(self.views[element_id].get_singleton_tag()))

    def set_visible(self, *ids: str) -> None:
        """Render only these views (hidden ones stop streaming)."""
        self.app.view_manager.set_current_view_ids([self.views[i].get_singleton_tag() for i in ids])

    def fit(self) -> None:
        """Fit every view to its background volume and redraw."""
        for view in self.views.values():
            view.fit_view_to_content()
            view.schedule_render()

    def fit_when_first_sized(self, view: SliceView) -> None:
        """Fit ``view`` once the browser first gives it a real size (it starts at an arbitrary one)."""

        def resized(interactor, _event) -> None:
            if min(interactor.GetSize()) > 16:
                interactor.RemoveObserver(tag)
                view.fit_view_to_content()
                view.schedule_render()

        tag = view.interactor().AddObserver(vtk.vtkCommand.WindowResizeEvent, resized)


def _no_gutter(_server: Server, _view_id: str, _view) -> None:
    """No per-view buttons: the page's own controls act on the session."""


def create_views(server: Server, app: SlicerApp) -> TabViews:
    """Register trame-slicer's streamed view factories and create the four slice views."""
    register_rca_factories(app.view_manager, server, slice_view_ui_f=_no_gutter)
    views = {}
    for element_id, (tag, orientation) in VIEWS.items():
        views[element_id] = app.view_manager.create_view(ViewLayoutDefinition.slice_view(orientation, label=tag))
    tab_views = TabViews(server, app, views)
    for view in views.values():
        tab_views.fit_when_first_sized(view)
    return tab_views
