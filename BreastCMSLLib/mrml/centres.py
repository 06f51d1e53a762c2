"""MRML adapter, evaluation: the lesion centre, peak-to-centre distances and the evaluation table (RAS mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from BreastCMSLLib.errors import InputError

TABLE_COLUMNS = ("case", "probability", "COAM mm", "CAM mm")


def new_table(scene, name: str = "BreastCMSL evaluation"):
    table_node = slicer.vtkMRMLTableNode()
    table_node.SetName(name)
    table = table_node.GetTable()
    case_column = vtk.vtkStringArray()
    case_column.SetName(TABLE_COLUMNS[0])
    table.AddColumn(case_column)
    for column in TABLE_COLUMNS[1:]:
        array = vtk.vtkDoubleArray()
        array.SetName(column)
        table.AddColumn(array)
    scene.AddNode(table_node)
    table_node.SetColumnUnitLabel("COAM mm", "mm")
    table_node.SetColumnUnitLabel("CAM mm", "mm")
    table_node.SetColumnDescription("COAM mm", "distance from the annotated lesion centre to the COAM peak")
    table_node.SetColumnDescription("CAM mm", "distance from the annotated lesion centre to the CAM peak")
    return table_node


def table_rows(table_node) -> dict[str, np.ndarray]:
    """The numeric columns of an evaluation table as float arrays."""
    table = table_node.GetTable()
    return {name: numpy_support.vtk_to_numpy(table.GetColumnByName(name)).astype(float)
            for name in TABLE_COLUMNS[1:]}


def centre_distances(scene, case: str, probability: float, peaks_ras: dict, centre_markups_node,
                     table_node=None) -> dict:
    """Distances (mm) from the annotated lesion centre to the COAM and CAM peaks (``peaks_ras``, RAS mm) of
    ``case``'s result.

    The centre is the first control point of ``centre_markups_node`` (world RAS). A row (case,
    probability, COAM mm, CAM mm) is appended to ``table_node`` (a new "BreastCMSL evaluation" table
    when None). Returns the row, the table node ID and the summary over all rows: mean and std
    (population, ddof=0) of each distance and the row count, as in the paper's localization evaluation.
    """
    if centre_markups_node is None or centre_markups_node.GetNumberOfControlPoints() < 1:
        name = centre_markups_node.GetName() if centre_markups_node is not None else "lesion centre"
        raise InputError(name, "has no control point; place the lesion centre first")
    centre = np.zeros(3)
    centre_markups_node.GetNthControlPointPositionWorld(0, centre)
    coam_mm = float(np.linalg.norm(centre - np.asarray(peaks_ras["coam"])))
    cam_mm = float(np.linalg.norm(centre - np.asarray(peaks_ras["cam"])))
    if table_node is None:
        table_node = new_table(scene)
    table = table_node.GetTable()
    if any(table.GetColumnByName(name) is None for name in TABLE_COLUMNS):
        raise InputError(table_node.GetName(), f"is not a BreastCMSL evaluation table (columns {TABLE_COLUMNS})")
    row = {"case": case, "probability": float(probability), "COAM mm": coam_mm,
           "CAM mm": cam_mm}
    table.GetColumnByName("case").InsertNextValue(row["case"])
    for name in TABLE_COLUMNS[1:]:
        table.GetColumnByName(name).InsertNextValue(row[name])
    table.Modified()
    table_node.Modified()
    return {"row": row, "centre_ras": centre.tolist(), "table_id": table_node.GetID(),
            "summary": table_summary(table_node)}


def table_summary(table_node) -> dict:
    """Row count and mean and std (population, ddof=0) of each distance (mm), as in the paper's evaluation."""
    columns = table_rows(table_node)
    summary = {"n": len(columns["COAM mm"])}
    for name, key in (("COAM mm", "coam"), ("CAM mm", "cam")):
        values = columns[name]
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
