"""MRML adapter, geometry <-> nodes: volume nodes <-> SimpleITK images, the inputs of an analysis, its result nodes.

The scene is always an argument: this module uses MRML, numpy and the Lib only (no qt, ctk, ``slicer.app``
or ``slicer.mrmlScene``), so it runs unchanged inside 3D Slicer and on the ``slicer-core`` wheel. MRML
works in RAS millimetres, the Lib in LPS millimetres; the MRML adapter modules (this one, :mod:`.display`,
:mod:`.evaluation`) are the only places that convert: (x, y, z)_RAS = (-x, -y, z)_LPS, and
IJK-to-RAS = diag(-1, -1, 1) @ IJK-to-LPS.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.mrml.display import style_heat_volume, style_label_volume
from BreastCMSLLib.pipeline.volumes import check_image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


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


def volume_scalars(node):
    """A scalar volume node's voxel array (``vtkDataArray``); :class:`InputError` naming the node when it has
    no image data or more than one component per voxel."""
    image_data = node.GetImageData() if node is not None else None
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(node.GetName() if node is not None else "volume", "has no image data")
    scalars = image_data.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(node.GetName(), f"has {scalars.GetNumberOfComponents()} components per voxel; "
                         "a scalar volume is needed")
    return scalars


def voxels_and_geometry(node) -> tuple[np.ndarray, dict]:
    """A scalar volume node's voxels as a (k, j, i) view of the node's own memory (no copy, the voxel type kept)
    and its geometry in LPS: ``spacing`` (mm), ``origin`` (mm) and row-major ``direction`` of the node's world
    IJK-to-RAS (linear parent transforms applied), oblique directions included."""
    scalars = volume_scalars(node)
    dims = node.GetImageData().GetDimensions()
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])
    ijk_to_lps = LPS_TO_RAS @ ijk_to_ras_matrix(node)[:3]  # diag(-1,-1,1) is its own inverse
    spacing = np.linalg.norm(ijk_to_lps[:, :3], axis=0)
    return array, {"spacing": spacing.tolist(), "origin": ijk_to_lps[:, 3].tolist(),
                   "direction": (ijk_to_lps[:, :3] / spacing).ravel().tolist()}


def image_from_volume_node(node) -> sitk.Image:
    """A copy of a scalar volume node's voxels as a SimpleITK image with the node's geometry in LPS
    (:func:`voxels_and_geometry`); the voxel type is kept."""
    array, geometry = voxels_and_geometry(node)
    image = sitk.GetImageFromArray(array)  # a copy: the image does not share the node's memory
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def ijk_to_ras_of_image(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a SimpleITK image's (LPS) geometry."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


def volume_node_from_image(scene, image: sitk.Image, name: str, labelmap: bool = False,
                           value_range: tuple[float, float] | None = None):
    """Add a scalar (or labelmap) volume node holding ``image``'s voxels on its exact grid; return it.

    The node holds the image's own voxel memory, no copy (a labelmap not stored as uint8: a uint8 copy): the image
    is handed over and kept alive with the node; change its voxels afterwards and the node's change too.
    ``value_range``: a scalar volume's display window from its known range of values, instead of the
    automatic window level Slicer computes from a histogram (its cost: ``benchmarks/README.md``)."""
    array = sitk.GetArrayViewFromImage(image)  # (k, j, i), contiguous: VTK's point order
    if labelmap:
        array = array.astype(np.uint8, copy=False)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*image.GetSize())
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=False)
    vtk_array.voxels_owner = image  # VTK keeps a wrapped array's attributes as long as the array itself lives
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
    if value_range is None or labelmap:
        node.CreateDefaultDisplayNodes()
    else:
        shown = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        shown.AutoWindowLevelOff()
        shown.SetWindowLevelMinMax(*value_range)
        node.SetAndObserveDisplayNodeID(shown.GetID())
    return node


def inputs_from_nodes(t1_node, series_nodes, inputs: str = "subtractions"):
    """The Lib's :class:`CaseInputs` from volume nodes (checked like files; sources are node names).
    ``t1_node`` may be None: the breast mask then comes from the pre-contrast phase."""
    from BreastCMSLLib.pipeline.preprocess import CaseInputs

    if not series_nodes or any(node is None for node in series_nodes):
        raise InputError("inputs", "a DCE volume selector is empty")
    series = [check_image(image_from_volume_node(node), node.GetName()) for node in series_nodes]
    t1 = None if t1_node is None else check_image(image_from_volume_node(t1_node), t1_node.GetName())
    names = [None if t1_node is None else t1_node.GetName(), *(node.GetName() for node in series_nodes)]
    return CaseInputs(t1, series, inputs, names)


def assign_by_dicom(node_files: list[list[str | Path]], n_channels: int, patterns=None) -> dict:
    """Pre-fill the selectors of volumes loaded from DICOM with the command line's role rules.

    ``node_files``: the DICOM files behind each volume node (Slicer keeps their instance UIDs on the node).
    Runs :func:`BreastCMSLLib.dicom.roles.assign_roles` on those series and maps each role back to its node:
    returns {"inputs": "phases"|"subtractions", "t1": index or None (no T1 in the study, or not one node),
    "series": [index or None, ...],
    "notes": [...], "times": the post-contrast phase times (:class:`~BreastCMSLLib.pipeline.phase_times.PhaseTimes`,
    None for subtractions)}. A role filled by one phase of a multi-phase series has no node of its own (load that
    series as a Sequence); an ambiguous study raises :class:`InputError` listing the candidates.
    """
    from BreastCMSLLib.dicom.roles import RolePatterns, assign_roles
    from BreastCMSLLib.dicom.series import scan_files
    from BreastCMSLLib.dicom.times import study_times

    owner = {Path(f): index for index, files in enumerate(node_files) for f in files}
    assignment = assign_roles(scan_files(list(owner)), n_channels=n_channels, patterns=patterns or RolePatterns(),
                              source="loaded DICOM volumes")
    indexes, notes = {}, []
    for entry in assignment.entries:
        nodes = {owner[frame.path] for frame in entry.phase.frames}
        if len(entry.phase.series.phases) > 1 or len(nodes) != 1:
            notes.append(f"{entry.role}: phase {entry.phase.label} of a multi-phase series; load that series as "
                         "a volume Sequence and choose it as the dynamic sequence")
        indexes[id(entry)] = nodes.pop() if len(nodes) == 1 and len(entry.phase.series.phases) == 1 else None
    t1 = assignment.t1  # None when the study has no non-fat-suppressed T1
    times = study_times(assignment, "loaded DICOM volumes") if assignment.kind == "phases" else None
    return {"inputs": assignment.kind, "t1": indexes[id(t1)] if t1 else None,
            "series": [indexes[id(e)] for e in assignment.entries if e is not t1], "notes": notes, "times": times}


def sequence_volume_nodes(sequence_node, pre_index: int = 0) -> list:
    """Pre-contrast then post-contrast phases from a volume Sequence: frame ``pre_index``, then the
    frames after it in order (frames before it are left out)."""
    count = sequence_node.GetNumberOfDataNodes()
    if not 0 <= pre_index < count - 1:
        raise InputError(sequence_node.GetName(), f"pre-contrast frame {pre_index} leaves no post-contrast "
                         f"frame among its {count} frames")
    return [sequence_node.GetNthDataNode(i) for i in range(pre_index, count)]


def sequence_proxy(scene, sequence_node):
    """The proxy volume through which a sequence browser shows ``sequence_node``'s frames (None without one)."""
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for i in range(browsers.GetNumberOfItems()):
        browser = browsers.GetItemAsObject(i)
        if browser.IsSynchronizedSequenceNode(sequence_node, True):
            return browser.GetProxyNode(sequence_node)
    return None


def module_parameter_node(scene, module_name: str):
    """A module's parameter node in ``scene``: the ``vtkMRMLScriptedModuleNode`` whose singleton tag is the
    module's name, as Slicer's ``ScriptedLoadableModuleLogic.getParameterNode`` makes it (created when absent)."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(module_name)
        node.SetName(module_name)
        node.SetAttribute("ModuleName", module_name)
        node = scene.AddNode(node)
    return node


def check_inputs(t1_node, series_nodes, inputs: str = "subtractions", model_path=None) -> list[str]:
    """What Analyze would say about these inputs, before running it.

    Raises :class:`InputError` for what would fail (empty selector, bad voxels, no overlap with the
    reference, channel count the model does not take); returns notes on volumes whose voxel centres are
    not those of the reference, which preprocessing interpolates.
    """
    from BreastCMSLLib.network.header import model_name, read_model_metadata
    from BreastCMSLLib.pipeline.grids import lattice_aligned
    from BreastCMSLLib.pipeline.preprocess import check_channels, check_overlap

    case = inputs_from_nodes(t1_node, series_nodes, inputs)
    check_overlap(case)
    if model_path:
        cfg, provenance = read_model_metadata(model_path)
        check_channels(case, cfg, model_name(model_path, provenance))
    return [f"{source}: on another grid than the reference {case.reference_source}; it will be resampled "
            "onto the reference grid (linear)"
            for image, source in zip([case.t1, *case.series], case.sources)
            if image is not None and not lattice_aligned(image, case.reference)]


def add_result_nodes(scene, case: str, maps: dict[str, sitk.Image], peaks_lps: dict[str, tuple]) -> dict:
    """Add each map's heat volume and labelmap and a peaks point list; return the new node IDs
    (``<map>_volume``, ``<map>_label``, ``peaks``).

    ``peaks_lps`` holds the peak (LPS mm) of each map the result has (of ``MAP_NAMES``: COAM, CAM and, when
    computed, the fine map); ``maps`` holds each of those maps (float, [0, 1]) and its ``<map>_label``
    ({0, 1}) image. The peaks node holds the peaks in RAS, in ``MAP_NAMES`` order, each drawn on every slice
    view (projected onto a slice that does not pass through it).
    All or nothing: if anything fails, every node added here (display and colour nodes included) is removed.
    """
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        ids, names = {}, [name for name in MAP_NAMES if name in peaks_lps]
        for which in names:
            volume = volume_node_from_image(scene, maps[which], f"{case} {which.upper()}", value_range=(0.0, 1.0))
            style_heat_volume(scene, volume)
            label = volume_node_from_image(scene, maps[f"{which}_label"], f"{case} {which.upper()} label",
                                           labelmap=True)
            style_label_volume(scene, label, which)
            ids[f"{which}_volume"], ids[f"{which}_label"] = volume.GetID(), label.GetID()
        points = slicer.vtkMRMLMarkupsFiducialNode()
        points.SetName(f"{case} peaks")
        scene.AddNode(points)
        points.CreateDefaultDisplayNodes()
        points.GetDisplayNode().SetSliceProjection(True)  # every peak on every slice view, projected when off it
        for which in names:
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


def read_result_folder(out_dir: str | Path) -> tuple[dict, dict[str, sitk.Image]]:
    """result.json and the maps and labelmaps written by ``breastcmsl analyze --out OUT_DIR``: every map
    whose peak result.json names (a folder made without the fine map has COAM and CAM only)."""
    out_dir = Path(out_dir)
    try:
        result = json.loads((out_dir / "result.json").read_text())
        files = [f"{name}{part}" for name in MAP_NAMES if f"{name}_peak_lps" in result for part in ("", "_label")]
        with ThreadPoolExecutor(2) as pool:  # SimpleITK reads without the GIL
            maps = dict(zip(files, pool.map(lambda name: sitk.ReadImage(str(out_dir / f"{name}.nrrd")), files)))
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(out_dir, f"is not a complete analyze output folder ({err})") from None
    return result, maps
