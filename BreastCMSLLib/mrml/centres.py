"""MRML adapter, evaluation: the lesion centre, peak-to-centre distances and the evaluation table (RAS mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from BreastCMSLLib.errors import InputError

DISTANCE_COLUMNS = {"coam": "COAM mm", "cam": "CAM mm", "fine": "fine mm"}  # by map of MAP_NAMES
TABLE_COLUMNS = ("case", "probability", *DISTANCE_COLUMNS.values())


def new_centre_node(scene):
    """A point list for the lesion centre, holding at most one point."""
    node = slicer.vtkMRMLMarkupsFiducialNode()
    node.SetName("Lesion centre")
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    node.SetMaximumNumberOfControlPoints(1)
    return node


def set_centre(node, ras) -> None:
    """The lesion centre's one point at the RAS point (mm)."""
    node.AddControlPoint(vtk.vtkVector3d(*map(float, ras)), "centre")


def new_table(scene, name: str = "BreastCMSL evaluation"):
    table_node = slicer.vtkMRMLTableNode()
    table_node.SetName(name)
    case_column = vtk.vtkStringArray()
    case_column.SetName(TABLE_COLUMNS[0])
    table_node.GetTable().AddColumn(case_column)
    scene.AddNode(table_node)
    add_missing_columns(table_node)
    return table_node


def add_missing_columns(table_node) -> None:
    """Add the numeric columns a table lacks (a table saved before the fine map existed has no "fine mm"),
    filled with NaN for its earlier rows."""
    table = table_node.GetTable()
    for column in TABLE_COLUMNS[1:]:
        if table.GetColumnByName(column) is None:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            array.SetNumberOfTuples(table.GetNumberOfRows())
            array.Fill(float("nan"))
            table.AddColumn(array)
    for column in DISTANCE_COLUMNS.values():
        table_node.SetColumnUnitLabel(column, "mm")
        table_node.SetColumnDescription(column, f"distance from the annotated lesion centre to the {column[:-3]} "
                                        "peak (empty: the result has no such map)")


def table_rows(table_node) -> dict[str, np.ndarray]:
    """The numeric columns of an evaluation table as float arrays (NaN: no such map in that row's result)."""
    table = table_node.GetTable()
    return {name: numpy_support.vtk_to_numpy(table.GetColumnByName(name)).astype(float)
            for name in TABLE_COLUMNS[1:]}


def centre_distances(scene, case: str, probability: float, peaks_ras: dict, centre_markups_node,
                     table_node=None) -> dict:
    """Distances (mm) from the annotated lesion centre to each map's peak (``peaks_ras``, RAS mm, by map name)
    of ``case``'s result.

    The centre is the first control point of ``centre_markups_node`` (world RAS). A row (case,
    probability, COAM mm, CAM mm, fine mm; NaN for a map the result lacks) is appended to ``table_node`` (a
    new "BreastCMSL evaluation" table when None). Returns the row, the table node ID and the summary over all
    rows: mean and std (population, ddof=0) of each distance and the row count, as in the paper's
    localization evaluation.
    """
    if centre_markups_node is None or centre_markups_node.GetNumberOfControlPoints() < 1:
        name = centre_markups_node.GetName() if centre_markups_node is not None else "lesion centre"
        raise InputError(name, "has no control point; place the lesion centre first")
    centre = np.zeros(3)
    centre_markups_node.GetNthControlPointPositionWorld(0, centre)
    if table_node is None:
        table_node = new_table(scene)
    table = table_node.GetTable()
    if table.GetColumnByName(TABLE_COLUMNS[0]) is None or table.GetColumnByName("COAM mm") is None:
        raise InputError(table_node.GetName(), f"is not a BreastCMSL evaluation table (columns {TABLE_COLUMNS})")
    add_missing_columns(table_node)
    row = {"case": case, "probability": float(probability),
           **{column: float(np.linalg.norm(centre - np.asarray(peaks_ras[which]))) if which in peaks_ras
              else float("nan") for which, column in DISTANCE_COLUMNS.items()}}
    table.GetColumnByName("case").InsertNextValue(row["case"])
    for name in TABLE_COLUMNS[1:]:
        table.GetColumnByName(name).InsertNextValue(row[name])
    table.Modified()
    table_node.Modified()
    return {"row": row, "centre_ras": centre.tolist(), "table_id": table_node.GetID(),
            "summary": table_summary(table_node)}


def table_summary(table_node) -> dict:
    """Row count ``n`` and, for each map, the count ``<map>_n`` of rows with its distance and their mean and
    std (population, ddof=0) in mm, as in the paper's evaluation (NaN when no row has that map)."""
    columns = table_rows(table_node)
    summary = {"n": len(columns["COAM mm"])}
    for key, name in DISTANCE_COLUMNS.items():
        values = columns[name][np.isfinite(columns[name])]
        summary[f"{key}_n"] = len(values)
        summary[f"{key}_mean_mm"] = float(values.mean()) if len(values) else float("nan")
        summary[f"{key}_std_mm"] = float(values.std()) if len(values) else float("nan")
    return summary


def table_records(table_node) -> list[dict]:
    """The rows of an evaluation table as dicts keyed by :data:`TABLE_COLUMNS`."""
    table = table_node.GetTable()
    cases = table.GetColumnByName(TABLE_COLUMNS[0])
    columns = table_rows(table_node)
    return [{TABLE_COLUMNS[0]: cases.GetValue(i), **{name: float(columns[name][i]) for name in TABLE_COLUMNS[1:]}}
            for i in range(table.GetNumberOfRows())]


def save_table_csv(table_node, path: str | Path) -> Path:
    """Write an evaluation table as CSV (MRML's own table storage node; a .schema.csv lands beside it)."""
    path = Path(path)
    storage = slicer.vtkMRMLTableStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(table_node):
        raise InputError(path, "could not be written")
    return path
