"""MRML adapter, evaluation: the lesion centre, peak-to-centre distances and the evaluation table (RAS mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from BreastCMSLLib.errors import InputError

DISTANCE_COLUMNS = {"coam": "COAM mm", "cam": "CAM mm", "fine": "fine mm"}  # by map of MAP_NAMES
# the kinetics at the lesion centre (curve classes, early PE %) and the FTV of the last drawn box (mL)
KINETICS_TEXT_COLUMNS = ("initial rise", "delayed phase")
KINETICS_NUMBER_COLUMNS = {"PE %": "percent enhancement at the early phase at the lesion centre",
                           "FTV mL": "functional tumour volume of the last region measured"}
NUMBER_COLUMNS = ("probability", *DISTANCE_COLUMNS.values(), *KINETICS_NUMBER_COLUMNS)
TABLE_COLUMNS = ("case", *NUMBER_COLUMNS[:4], *KINETICS_TEXT_COLUMNS, *KINETICS_NUMBER_COLUMNS)


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
    """Add the columns a table lacks (a table saved before the fine map existed has no "fine mm", one saved
    before the kinetics none of theirs), filled with NaN (numbers) or "" (words) for its earlier rows."""
    table = table_node.GetTable()
    for column in TABLE_COLUMNS[1:]:
        if table.GetColumnByName(column) is None:
            text = column in KINETICS_TEXT_COLUMNS
            array = vtk.vtkStringArray() if text else vtk.vtkDoubleArray()
            array.SetName(column)
            array.SetNumberOfValues(table.GetNumberOfRows()) if text else array.SetNumberOfTuples(
                table.GetNumberOfRows())
            if not text:
                array.Fill(float("nan"))
            table.AddColumn(array)
    for column in DISTANCE_COLUMNS.values():
        table_node.SetColumnUnitLabel(column, "mm")
        table_node.SetColumnDescription(column, f"distance from the annotated lesion centre to the {column[:-3]} "
                                        "peak (empty: the result has no such map)")
    for column, description in KINETICS_NUMBER_COLUMNS.items():
        table_node.SetColumnUnitLabel(column, column.split()[1])
        table_node.SetColumnDescription(column, description + " (empty: no kinetics)")


def table_rows(table_node) -> dict[str, np.ndarray]:
    """The numeric columns of an evaluation table as float arrays (NaN: no such map in that row's result, or no
    kinetics)."""
    table = table_node.GetTable()
    return {name: numpy_support.vtk_to_numpy(table.GetColumnByName(name)).astype(float) for name in NUMBER_COLUMNS}


def centre_distances(scene, case: str, probability: float, peaks_ras: dict, centre_markups_node,
                     table_node=None, kinetics: dict | None = None) -> dict:
    """Distances (mm) from the annotated lesion centre to each map's peak (``peaks_ras``, RAS mm, by map name)
    of ``case``'s result.

    The centre is the first control point of ``centre_markups_node`` (world RAS). A row (case,
    probability, COAM mm, CAM mm, fine mm; NaN for a map the result lacks; then the ``kinetics`` values by
    column, :data:`KINETICS_TEXT_COLUMNS` and :data:`KINETICS_NUMBER_COLUMNS`, "" and NaN where missing) is
    appended to ``table_node`` (a new "BreastCMSL evaluation" table when None). Returns the row, the table node
    ID and the summary over all rows: mean and std (population, ddof=0) of each distance and the row count, as
    in the paper's localization evaluation.
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
              else float("nan") for which, column in DISTANCE_COLUMNS.items()},
           **{column: str((kinetics or {}).get(column) or "") for column in KINETICS_TEXT_COLUMNS},
           **{column: float((kinetics or {}).get(column, float("nan"))) for column in KINETICS_NUMBER_COLUMNS}}
    row = {name: row[name] for name in TABLE_COLUMNS}
    for name in TABLE_COLUMNS:
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
    columns = table_rows(table_node)
    return [{name: float(columns[name][i]) if name in columns else table.GetColumnByName(name).GetValue(i)
             for name in TABLE_COLUMNS} for i in range(table.GetNumberOfRows())]


def save_table_csv(table_node, path: str | Path) -> Path:
    """Write an evaluation table as CSV (MRML's own table storage node; a .schema.csv lands beside it)."""
    path = Path(path)
    storage = slicer.vtkMRMLTableStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(table_node):
        raise InputError(path, "could not be written")
    return path
