"""The MRML adapter: volume nodes <-> SimpleITK images, Analyze on nodes, lesion-centre evaluation.

The scene is always an argument: this module uses MRML, numpy and the Lib only (no qt, ctk,
``slicer.app`` or ``slicer.mrmlScene``), so it runs unchanged inside 3D Slicer and on the
``slicer-core`` wheel. MRML works in RAS millimetres, the Lib in LPS millimetres; this is the one
place that converts: (x, y, z)_RAS = (-x, -y, z)_LPS, and IJK-to-RAS = diag(-1, -1, 1) @ IJK-to-LPS.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .volumes import check_image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
MAP_NAMES = ("coam", "cam", "coam_label", "cam_label")
TABLE_COLUMNS = ("case", "probability", "COAM mm", "CAM mm")
HEAT_COLOR_NAME = "Inferno"  # Slicer's default perceptual colour table; created below when absent
# matplotlib's "inferno" (CC0, van der Walt & Smith) sampled at 9 equidistant stops: the fallback heat
# colour table for scenes without Slicer's default colour files (the slicer-core wheel ships none).
INFERNO_STOPS = (
    (0.0015, 0.0005, 0.0139), (0.1293, 0.0473, 0.2908), (0.3415, 0.0623, 0.4294),
    (0.5409, 0.1347, 0.4151), (0.7357, 0.2159, 0.3302), (0.8943, 0.3534, 0.1936),
    (0.9784, 0.5579, 0.0349), (0.9746, 0.7977, 0.2063), (0.9884, 0.9984, 0.6449),
)
LABEL_COLORS = {"coam": (1.0, 0.85, 0.1), "cam": (0.1, 0.8, 1.0)}  # outline colours of the labelmaps


def lps_to_ras(point) -> list[float]:
    """An LPS point (mm) as RAS (mm)."""
    return (LPS_TO_RAS @ np.asarray(point, dtype=float)).tolist()


def ijk_to_ras_matrix(node) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume node in world coordinates (linear parent transforms applied)."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    matrix = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(node.GetName(), "is under a non-linear transform; harden it first")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)]) @ matrix
    return matrix


def image_from_volume_node(node) -> sitk.Image:
    """A copy of a scalar volume node's voxels as a SimpleITK image with the node's geometry in LPS.

    The voxel type is kept; the geometry is the node's world IJK-to-RAS (linear parent transforms
    applied) converted to LPS: origin, spacing and direction exactly, oblique directions included.
    """
    image_data = node.GetImageData() if node is not None else None
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(node.GetName() if node is not None else "volume", "has no image data")
    scalars = image_data.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(node.GetName(), f"has {scalars.GetNumberOfComponents()} components per voxel; "
                         "a scalar volume is needed")
    dims = image_data.GetDimensions()
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).copy()
    image = sitk.GetImageFromArray(array)
    ijk_to_lps = LPS_TO_RAS @ ijk_to_ras_matrix(node)[:3]  # diag(-1,-1,1) is its own inverse
    spacing = np.linalg.norm(ijk_to_lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(ijk_to_lps[:, 3].tolist())
    image.SetDirection((ijk_to_lps[:, :3] / spacing).ravel().tolist())
    return image


def ijk_to_ras_of_image(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a SimpleITK image's (LPS) geometry."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


def volume_node_from_image(scene, image: sitk.Image, name: str, labelmap: bool = False):
    """Add a scalar (or labelmap) volume node holding ``image``'s voxels on its exact grid; return it."""
    array = np.ascontiguousarray(sitk.GetArrayViewFromImage(image))
    if labelmap:
        array = array.astype(np.uint8, copy=False)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*image.GetSize())
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image_data.GetPointData().SetScalars(vtk_array)
    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    matrix = vtk.vtkMatrix4x4()
    for r, row in enumerate(ijk_to_ras_of_image(image)):
        for c, value in enumerate(row):
            matrix.SetElement(r, c, float(value))
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(image_data)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def inputs_from_nodes(t1_node, series_nodes, inputs: str = "subtractions"):
    """The Lib's :class:`CaseInputs` from volume nodes (checked like files; sources are node names)."""
    from .preprocess import CaseInputs

    nodes = [t1_node, *series_nodes]
    if any(node is None for node in nodes):
        raise InputError("inputs", "a volume selector is empty")
    names = [node.GetName() for node in nodes]
    images = [check_image(image_from_volume_node(node), name) for node, name in zip(nodes, names)]
    return CaseInputs(images[0], images[1:], inputs, names)


def export_input_nodes(t1_node, series_nodes, folder: str | Path) -> tuple[Path, list[Path]]:
    """Write the input nodes as NRRD files (exact LPS geometry) for ``breastcmsl analyze`` in a background
    process; returns (t1 path, series paths). File names map back to nodes by position."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, node in enumerate([t1_node, *series_nodes]):
        path = folder / ("t1.nrrd" if index == 0 else f"series_{index}.nrrd")
        sitk.WriteImage(image_from_volume_node(node), str(path))
        paths.append(path)
    return paths[0], paths[1:]


def assign_by_dicom(node_files: list[list[str | Path]], n_channels: int, patterns=None) -> dict:
    """Pre-fill the selectors of volumes loaded from DICOM with the command line's role rules.

    ``node_files``: the DICOM files behind each volume node (Slicer keeps their instance UIDs on the node).
    Runs :func:`BreastCMSLLib.roles.assign_roles` on those series and maps each role back to its node:
    returns {"inputs": "phases"|"subtractions", "t1": index or None, "series": [index or None, ...],
    "notes": [...]}. A role filled by one phase of a multi-phase series has no node of its own (load that
    series as a Sequence); an ambiguous study raises :class:`InputError` listing the candidates.
    """
    from .dicom import scan_files
    from .roles import RolePatterns, assign_roles

    owner = {Path(f): index for index, files in enumerate(node_files) for f in files}
    assignment = assign_roles(scan_files(list(owner)), n_channels=n_channels, patterns=patterns or RolePatterns(),
                              source="loaded DICOM volumes")
    indexes, notes = [], []
    for entry in assignment.entries:
        nodes = {owner[frame.path] for frame in entry.phase.frames}
        if len(entry.phase.series.phases) > 1 or len(nodes) != 1:
            notes.append(f"{entry.role}: phase {entry.phase.label} of a multi-phase series; load that series as "
                         "a volume Sequence and choose it as the dynamic sequence")
            indexes.append(None)
        else:
            indexes.append(nodes.pop())
    return {"inputs": assignment.kind, "t1": indexes[0], "series": indexes[1:], "notes": notes}


def sequence_volume_nodes(sequence_node, pre_index: int = 0) -> list:
    """Pre-contrast then post-contrast phases from a volume Sequence: frame ``pre_index``, then the
    frames after it in order (frames before it are left out)."""
    count = sequence_node.GetNumberOfDataNodes()
    if not 0 <= pre_index < count - 1:
        raise InputError(sequence_node.GetName(), f"pre-contrast frame {pre_index} leaves no post-contrast "
                         f"frame among its {count} frames")
    return [sequence_node.GetNthDataNode(i) for i in range(pre_index, count)]


def check_inputs(t1_node, series_nodes, inputs: str = "subtractions", model_path=None) -> list[str]:
    """What Analyze would say about these inputs, before running it.

    Raises :class:`InputError` for what would fail (empty selector, bad voxels, no overlap with the
    reference, channel count the model does not take); returns notes on volumes whose voxel centres are
    not those of the reference, which preprocessing interpolates.
    """
    from .analyze import check_channels
    from .grids import lattice_aligned
    from .modelfile import model_name, read_model_metadata
    from .preprocess import check_overlap

    case = inputs_from_nodes(t1_node, series_nodes, inputs)
    check_overlap(case)
    if model_path:
        cfg, provenance = read_model_metadata(model_path)
        check_channels(case, cfg, model_name(model_path, provenance))
    return [f"{source}: on another grid than the reference {case.reference_source}; it will be resampled "
            "onto the reference grid (linear)"
            for image, source in zip([case.t1, *case.series], case.sources)
            if not lattice_aligned(image, case.reference)]


def follow_slice(leader, follower, offset_ras) -> None:
    """Move slice node ``follower`` as ``leader`` is: the same orientation, zoom and pan, with its slice
    origin ``offset_ras`` (RAS mm) away from the leader's. "Compare CAM vs COAM" keeps each view on its
    own map's peak this way (offset = follower's peak - leader's peak) while both scroll together."""
    slice_to_ras = follower.GetSliceToRAS()
    slice_to_ras.DeepCopy(leader.GetSliceToRAS())
    for row in range(3):
        slice_to_ras.SetElement(row, 3, slice_to_ras.GetElement(row, 3) + float(offset_ras[row]))
    follower.SetFieldOfView(*leader.GetFieldOfView())
    follower.SetXYZOrigin(*leader.GetXYZOrigin())
    follower.UpdateMatrices()


def _heat_color_node(scene):
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


def _label_color_node(scene, which: str):
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
    node.SetNamesInitialised(True)
    scene.AddNode(node)
    return node


def add_result_nodes(scene, case: str, maps: dict[str, sitk.Image], peaks_lps: dict[str, tuple]) -> dict:
    """Add the COAM/CAM heat volumes, their labelmaps and a peaks point list; return the new node IDs.

    ``maps`` holds ``coam``, ``cam`` (float, [0, 1]) and ``coam_label``, ``cam_label`` ({0, 1}) images;
    ``peaks_lps`` holds ``coam`` and ``cam`` points in LPS mm. All or nothing: if anything fails,
    every node added here (display and colour nodes included) is removed again.
    """
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        heat = _heat_color_node(scene)
        ids = {}
        for which in ("coam", "cam"):
            volume = volume_node_from_image(scene, sitk.Cast(maps[which], sitk.sitkFloat32), f"{case} {which.upper()}")
            display = volume.GetDisplayNode()
            display.SetAndObserveColorNodeID(heat.GetID())
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
            label = volume_node_from_image(scene, maps[f"{which}_label"], f"{case} {which.upper()} label",
                                           labelmap=True)
            label.GetDisplayNode().SetAndObserveColorNodeID(_label_color_node(scene, which).GetID())
            ids[f"{which}_volume"], ids[f"{which}_label"] = volume.GetID(), label.GetID()
        points = slicer.vtkMRMLMarkupsFiducialNode()
        points.SetName(f"{case} peaks")
        scene.AddNode(points)
        points.CreateDefaultDisplayNodes()
        for which in ("coam", "cam"):
            index = points.AddControlPoint(vtk.vtkVector3d(*lps_to_ras(peaks_lps[which])), f"{which.upper()} peak")
            points.SetNthControlPointLocked(index, True)
        ids["peaks"] = points.GetID()
        return ids
    except Exception:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed(added):
            if node.GetID() not in before:
                scene.RemoveNode(node)
        raise


def _result(case: str, probability: float, cos_theta: float, prediction: str, model: dict,
            peaks_lps: dict, label_fraction: float, node_ids: dict) -> dict:
    return {
        "case": case,
        "probability": float(probability),
        "cos_theta": float(cos_theta),
        "prediction": prediction,
        "model": model,
        "label_fraction": float(label_fraction),
        "coam_peak_ras": lps_to_ras(peaks_lps["coam"]),
        "cam_peak_ras": lps_to_ras(peaks_lps["cam"]),
        "node_ids": node_ids,
    }


def analyze_nodes(scene, t1_node, series_nodes, model_path, inputs: str = "subtractions",
                  device: str = "auto", label_fraction: float = 0.5, case: str | None = None) -> dict:
    """Run the Lib in-process on volume nodes and add its maps to the scene on the reference grid.

    ``series_nodes``: the N subtractions (``inputs="subtractions"``) or pre-contrast then N post-contrast
    phases (``inputs="phases"``); the reference is the first subtraction / first post-contrast phase.
    Returns probability, cos_theta, prediction, model info, the new node IDs and the COAM/CAM peaks in
    RAS mm. Nothing is added to the scene when the analysis fails; input nodes are never modified.
    ``case`` names the new nodes and the evaluation row (default: the reference node's name).
    """
    from .analyze import analyze_case
    from .modelfile import load_model

    case_inputs = inputs_from_nodes(t1_node, series_nodes, inputs)
    analysis = analyze_case(case_inputs, load_model(model_path), device=device, label_fraction=label_fraction)
    case = case or case_inputs.reference_source
    peaks = {"coam": analysis.coam_peak_lps, "cam": analysis.cam_peak_lps}
    maps = {name: getattr(analysis, name) for name in MAP_NAMES}
    ids = add_result_nodes(scene, case, maps, peaks)
    return _result(case, analysis.probability, analysis.cos_theta, analysis.prediction, analysis.model,
                   peaks, analysis.label_fraction, ids)


def load_result_folder(scene, out_dir: str | Path, case: str) -> dict:
    """Add the outputs of ``breastcmsl analyze --out OUT_DIR`` to the scene; same return as analyze_nodes."""
    out_dir = Path(out_dir)
    try:
        result = json.loads((out_dir / "result.json").read_text())
        maps = {name: sitk.ReadImage(str(out_dir / f"{name}.nrrd")) for name in MAP_NAMES}
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(out_dir, f"is not a complete analyze output folder ({err})") from None
    peaks = {"coam": result["coam_peak_lps"], "cam": result["cam_peak_lps"]}
    ids = add_result_nodes(scene, case, maps, peaks)
    return _result(case, result["probability"], result["cos_theta"], result["prediction"], result["model"],
                   peaks, result["label_fraction"], ids)


def _new_table(scene, name: str = "BreastCMSL evaluation"):
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


def centre_distances(scene, result: dict, centre_markups_node, table_node=None) -> dict:
    """Distances (mm) from the annotated lesion centre to the COAM and CAM peaks of ``result``.

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
    coam_mm = float(np.linalg.norm(centre - np.asarray(result["coam_peak_ras"])))
    cam_mm = float(np.linalg.norm(centre - np.asarray(result["cam_peak_ras"])))
    if table_node is None:
        table_node = _new_table(scene)
    table = table_node.GetTable()
    if any(table.GetColumnByName(name) is None for name in TABLE_COLUMNS):
        raise InputError(table_node.GetName(), f"is not a BreastCMSL evaluation table (columns {TABLE_COLUMNS})")
    row = {"case": result["case"], "probability": float(result["probability"]), "COAM mm": coam_mm,
           "CAM mm": cam_mm}
    table.GetColumnByName("case").InsertNextValue(row["case"])
    for name in TABLE_COLUMNS[1:]:
        table.GetColumnByName(name).InsertNextValue(row[name])
    table.Modified()
    table_node.Modified()
    columns = table_rows(table_node)
    summary = {"n": len(columns["COAM mm"])}
    for name, key in (("COAM mm", "coam"), ("CAM mm", "cam")):
        summary[f"{key}_mean_mm"] = float(columns[name].mean())
        summary[f"{key}_std_mm"] = float(columns[name].std())
    return {"row": row, "centre_ras": centre.tolist(), "table_id": table_node.GetID(), "summary": summary}


def save_table_csv(table_node, path: str | Path) -> Path:
    """Write an evaluation table as CSV (MRML's own table storage node; a .schema.csv lands beside it)."""
    path = Path(path)
    storage = slicer.vtkMRMLTableStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(table_node):
        raise InputError(path, "could not be written")
    return path
