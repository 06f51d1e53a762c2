"""MRML adapter, display and views: heat and labelmap styles, result layers on slice views, peaks, two maps
compared side by side kept in step (one framing, each on its own peak's slice). Slice nodes and the scene are
arguments (RAS millimetres, as MRML)."""

from __future__ import annotations

import slicer
import vtk

HEAT_COLOR_NAME = "Inferno"  # Slicer's default perceptual colour table; created below when absent
# matplotlib's "inferno" (CC0, van der Walt & Smith) sampled at 9 equidistant stops: the fallback heat
# colour table for scenes without Slicer's default colour files (the slicer-core wheel ships none).
INFERNO_STOPS = (
    (0.0015, 0.0005, 0.0139), (0.1293, 0.0473, 0.2908), (0.3415, 0.0623, 0.4294),
    (0.5409, 0.1347, 0.4151), (0.7357, 0.2159, 0.3302), (0.8943, 0.3534, 0.1936),
    (0.9784, 0.5579, 0.0349), (0.9746, 0.7977, 0.2063), (0.9884, 0.9984, 0.6449),
)
# outline colours of the labelmaps, one per map of MAP_NAMES
LABEL_COLORS = {"coam": (1.0, 0.85, 0.1), "cam": (0.1, 0.8, 1.0), "fine": (0.2, 1.0, 0.35)}


def follow_slice(leader, follower, offset_ras) -> None:
    """Move slice node ``follower`` as ``leader`` is: the same orientation, zoom and pan, with its slice
    origin ``offset_ras`` (RAS mm) away from the leader's. The compare view keeps each view on its
    own map's peak this way (offset = follower's peak - leader's peak) while both scroll together."""
    slice_to_ras = follower.GetSliceToRAS()
    slice_to_ras.DeepCopy(leader.GetSliceToRAS())
    for row in range(3):
        slice_to_ras.SetElement(row, 3, slice_to_ras.GetElement(row, 3) + float(offset_ras[row]))
    follower.SetFieldOfView(*leader.GetFieldOfView())
    follower.SetXYZOrigin(*leader.GetXYZOrigin())
    follower.UpdateMatrices()


def heat_color_node(scene):
    """Slicer's "Inferno" colour table when the scene has it, else one made from :data:`INFERNO_STOPS`."""
    existing = scene.GetFirstNodeByName(HEAT_COLOR_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorNode"):
        return existing
    node = slicer.vtkMRMLProceduralColorNode()
    node.SetName(HEAT_COLOR_NAME)
    node.SetAttribute("Category", "BreastCMSL")
    function = vtk.vtkColorTransferFunction()
    for i, rgb in enumerate(INFERNO_STOPS):
        function.AddRGBPoint(i / (len(INFERNO_STOPS) - 1), *rgb)
    node.SetAndObserveColorTransferFunction(function)
    scene.AddNode(node)
    return node


def label_color_node(scene, which: str):
    """A two-entry colour table (0 transparent background, 1 the map's outline colour)."""
    name = f"BreastCMSL {which.upper()} label"
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetNumberOfColors(2)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    node.SetColor(1, f"{which.upper()} high", *LABEL_COLORS[which], 1.0)
    scene.AddNode(node)
    return node


def style_heat_volume(scene, volume) -> None:
    """Show a [0, 1] map with the heat colour table over its full range."""
    display = volume.GetDisplayNode()
    display.SetAndObserveColorNodeID(heat_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)


def style_label_volume(scene, label, which: str) -> None:
    """Colour a {0, 1} labelmap with its map's outline colour (``which``: one of MAP_NAMES)."""
    label.GetDisplayNode().SetAndObserveColorNodeID(label_color_node(scene, which).GetID())


def show_layers(slice_nodes, background, foreground, label, opacity: float, outline: bool) -> None:
    """Show ``background`` (the reference volume), ``foreground`` (a heat map) at ``opacity`` and ``label``
    (its labelmap, as an outline or filled) on each slice view given by its slice node."""
    for slice_node in slice_nodes:
        composite = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(slice_node)
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(float(opacity))
        composite.SetLabelVolumeID(label.GetID() if label else None)
        slice_node.SetUseLabelOutline(bool(outline))


def set_window_level(volume, window: float, level: float) -> None:
    """Fixed window and level (image units) for a scalar volume's display (automatic window/level off)."""
    volume_display = volume.GetDisplayNode()
    volume_display.AutoWindowLevelOff()
    volume_display.SetWindowLevel(float(window), float(level))


def jump_to(slice_nodes, ras, centred: bool = True) -> None:
    """Move each slice view onto the RAS point (mm) in its own orientation: ``centred``, the point to the view's
    centre; else only the slice through the point, the view's framing kept."""
    for slice_node in slice_nodes:
        if centred:
            slice_node.JumpSliceByCentering(*map(float, ras))
        else:
            slice_node.JumpSliceByOffsetting(*map(float, ras))


def normal_offset(slice_node, ras_from, ras_to) -> list[float]:
    """The part of ``ras_to - ras_from`` (RAS mm) along the slice view's normal: what moves the view from the
    slice through one point to the slice through the other without panning it."""
    matrix = slice_node.GetSliceToRAS()
    normal = [matrix.GetElement(row, 2) for row in range(3)]
    along = sum(n * (b - a) for n, a, b in zip(normal, ras_from, ras_to))
    return [n * along for n in normal]


class LinkedViews:
    """Slice views that move together, each on the slice through its own point: moving one (scroll, zoom, pan)
    moves the others with :func:`follow_slice`, offset along the slice normal only, so all keep one framing
    and each its point's slice (e.g. two maps' peaks)."""

    def __init__(self, views: list[tuple[object, list[float]]]):
        self.views = views  # (slice node, its point in RAS mm)
        self._following = False
        self._tags = [(node, node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._moved)) for node, _ in views]

    def _moved(self, caller, _event) -> None:
        points = [point for node, point in self.views if node is caller]
        if self._following or not points:
            return
        self._following = True
        try:
            for other, point in self.views:
                if other is not caller:
                    follow_slice(caller, other, normal_offset(caller, points[0], point))
        finally:
            self._following = False

    def unlink(self) -> None:
        for node, tag in self._tags:
            node.RemoveObserver(tag)
        self._tags = []
