"""The kinetics in the scene: the SER label's colour table, the PE/SER overlays and the enhancement curve as Slicer
plot nodes (a table, one plot series, a chart). Colours and legend: :mod:`BreastCMSLLib.pipeline.kinetics`.
Points here are RAS (the scene's frame)."""

from __future__ import annotations

import slicer
import vtk

from BreastCMSLLib.pipeline.kinetics import SER_COLOURS, SER_LABELS

SER_COLOR_NAME = "BreastCMSL SER label"
PE_RANGE = (0.0, 250.0)  # %: the PE overlay's colour range


def ser_color_node(scene):
    """The SER label's colour table: 0 transparent, 1 persistent, 2 plateau, 3 washout (:data:`SER_COLOURS`)."""
    existing = scene.GetFirstNodeByName(SER_COLOR_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(SER_COLOR_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(SER_LABELS) + 1)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for label, name in SER_LABELS.items():
        node.SetColor(label, name, *SER_COLOURS[label], 1.0)
    scene.AddNode(node)
    return node


def style_ser_label(scene, label_node) -> None:
    label_node.GetDisplayNode().SetAndObserveColorNodeID(ser_color_node(scene).GetID())


def style_pe(pe_node, color_node) -> None:
    """Show a PE volume (%) with ``color_node`` over :data:`PE_RANGE`."""
    shown = pe_node.GetDisplayNode()
    shown.SetAndObserveColorNodeID(color_node.GetID())
    shown.AutoWindowLevelOff()
    shown.SetWindowLevelMinMax(*PE_RANGE)


def curve_chart(scene, name: str, times_s: list[float], percent: list[float], chart=None):
    """A plot series of ``percent`` (relative enhancement, %) against ``times_s`` (s) in a table node, added to
    ``chart`` (a new ``vtkMRMLPlotChartNode`` when None); returns the chart node."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} curve")
    columns = []
    for title, values in (("time_s", times_s), ("enhancement_percent", percent)):
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        for value in values:
            column.InsertNextValue(float(value))
        columns.append(column)
        table.AddColumn(column)
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("time_s")
    series.SetYColumnName("enhancement_percent")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "BreastCMSL enhancement curves")
        chart.SetXAxisTitle("time after injection (s)")
        chart.SetYAxisTitle("relative enhancement (%)")
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart
