"""The MRML adapter modules on a real vtkMRMLScene (slicer-core wheel): geometry <-> nodes, result nodes and their
display, input checks, sequences, DICOM role assignment on nodes, linked compare views."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.mrml import centres, display, nodes
from BreastCMSLLib.panel import exchange
from Testing.dicomsynth import write_study
from Testing.scenes import OBLIQUE, case_nodes, make_oblique_case, matrix_of, rotation


def oblique_image(size=(7, 5, 4), spacing=(0.8, 1.3, 2.7), origin=(-31.5, 12.25, 40.0)) -> sitk.Image:
    array = np.random.default_rng(3).normal(size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(rotation(0.3, -0.2, 0.5).ravel().tolist())
    return image


def test_image_to_node_places_every_voxel_at_its_lps_point_negated():
    scene = slicer.vtkMRMLScene()
    image = oblique_image()
    node = nodes.volume_node_from_image(scene, image, "oblique")
    matrix = matrix_of(node)
    data = node.GetImageData()
    for ijk in [(0, 0, 0), (6, 0, 0), (0, 4, 0), (0, 0, 3), (3, 2, 1), (6, 4, 3)]:
        x, y, z = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(matrix @ [*ijk, 1.0], [-x, -y, z, 1.0], atol=1e-9)
        assert data.GetScalarComponentAsDouble(*ijk, 0) == pytest.approx(image.GetPixel(ijk), abs=0)
    assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    assert scene.GetNodeByID(node.GetID()) is node


def test_node_image_node_round_trip_with_oblique_ijk_to_ras():
    scene = slicer.vtkMRMLScene()
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation(-0.4, 0.25, 1.1) @ np.diag([0.7, 0.9, 3.1])
    ijk_to_ras[:3, 3] = [12.5, -80.0, 33.3]
    node = slicer.vtkMRMLScalarVolumeNode()
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(6, 4, 3)
    image_data.AllocateScalars(vtk.VTK_SHORT, 1)
    values = np.arange(6 * 4 * 3, dtype=np.int16) * 7 - 100
    image_data.GetPointData().GetScalars().SetVoidArray(values, values.size, 1)
    node.SetAndObserveImageData(image_data)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(m)
    scene.AddNode(node)

    image = nodes.image_from_volume_node(node)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image).ravel(), values)
    lps = np.diag([-1, -1, 1]) @ ijk_to_ras[:3]
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((5, 3, 2)), lps @ [5, 3, 2, 1], atol=1e-9)

    back = nodes.volume_node_from_image(scene, image, "back")
    np.testing.assert_allclose(matrix_of(back), ijk_to_ras, atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(node))

    label = nodes.volume_node_from_image(scene, sitk.Cast(image > 0, sitk.sitkUInt8), "label", labelmap=True)
    assert label.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_allclose(matrix_of(label), ijk_to_ras, atol=1e-6)


def test_linear_parent_transform_is_applied():
    scene = slicer.vtkMRMLScene()
    node = nodes.volume_node_from_image(scene, oblique_image(), "moved")
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    to_parent = np.eye(4)
    to_parent[:3, :3] = rotation(0.1, 0.0, -0.3)
    to_parent[:3, 3] = [5.0, -2.0, 7.5]
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, to_parent[r, c])
    transform.SetMatrixTransformToParent(m)
    local = matrix_of(node)
    node.SetAndObserveTransformNodeID(transform.GetID())
    image = nodes.image_from_volume_node(node)
    np.testing.assert_allclose(nodes.ijk_to_ras_of_image(image), to_parent @ local, atol=1e-9)


def test_exported_arrays_hold_the_nodes_world_geometry_and_voxels(tmp_path):
    """The export for the worker (panel/exchange.py): a plain node and one under a transform, read back as the worker
    reads them, give the node's world IJK-to-RAS and its voxels, and leave the scene as it was."""
    scene = slicer.vtkMRMLScene()
    image = oblique_image()
    plain, moved = (nodes.volume_node_from_image(scene, image, name) for name in ("plain", "moved"))
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 12.5)
    m.SetElement(1, 1, 0.0), m.SetElement(1, 2, -1.0), m.SetElement(2, 1, 1.0), m.SetElement(2, 2, 0.0)
    transform.SetMatrixTransformToParent(m)
    moved.SetAndObserveTransformNodeID(transform.GetID())
    before = (scene.GetNumberOfNodes(), plain.GetMTime(), moved.GetMTime())
    volumes = exchange.write_inputs([None, *((*nodes.voxels_and_geometry(node), node.GetName())
                                             for node in (plain, moved))], tmp_path / "inputs")
    assert volumes[0] is None and sorted(p.name for p in (tmp_path / "inputs").iterdir()) == ["series_1.npy",
                                                                                            "series_2.npy"]
    assert (scene.GetNumberOfNodes(), plain.GetMTime(), moved.GetMTime()) == before
    inputs, used = exchange.case_inputs(volumes, "phases")
    assert used == {"kind": "phases", "t1": None, "series": ["plain", "moved"]}
    for node, written in zip((plain, moved), inputs.series):
        np.testing.assert_allclose(nodes.ijk_to_ras_of_image(written), nodes.ijk_to_ras_matrix(node), atol=1e-9)
        assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))
    assert not np.allclose(nodes.ijk_to_ras_matrix(moved), nodes.ijk_to_ras_matrix(plain))  # the transform acted


# ---- analyze_nodes, check_inputs and centre_distances on a phantom case (nodes read by MRML's own reader)

@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return make_oblique_case(tmp_path_factory.mktemp("nodes"))


def test_adding_results_is_all_or_nothing(case):
    scene = slicer.vtkMRMLScene()
    maps = {name: sitk.ReadImage(str(case["out"] / f"{name}.nrrd")) for name in ("coam", "cam", "coam_label")}
    count = scene.GetNumberOfNodes()
    with pytest.raises(KeyError, match="cam_label"):  # fails after the COAM nodes and the CAM map were added
        nodes.add_result_nodes(scene, "broken", maps, {"coam": (0, 0, 0), "cam": (0, 0, 0)})
    assert scene.GetNumberOfNodes() == count


def test_check_inputs_reports_before_running(case, tmp_path):
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, case["dir"])
    assert nodes.check_inputs(t1, series, "phases", case["model"]) == []
    # the T1 on a coarser grid in the same space: resampled, reported
    coarse = sitk.Resample(sitk.ReadImage(str(case["dir"] / "t1.nrrd")), [48, 32, 20], sitk.Transform(),
                           sitk.sitkLinear, sitk.ReadImage(str(case["dir"] / "t1.nrrd")).GetOrigin(),
                           [7.0, 6.4, 7.6], OBLIQUE)
    coarse_node = nodes.volume_node_from_image(scene, coarse, "coarse T1")
    notes = nodes.check_inputs(coarse_node, series, "phases")
    assert len(notes) == 1 and notes[0].startswith("coarse T1: on another grid")
    # a post-contrast phase somewhere else: an error naming the node
    far = sitk.ReadImage(str(case["dir"] / "post_3.nrrd"))
    far.SetOrigin([o + 2000.0 for o in far.GetOrigin()])
    far_node = nodes.volume_node_from_image(scene, far, "far post")
    with pytest.raises(InputError, match="far post: does not overlap"):
        nodes.check_inputs(t1, [*series[:3], far_node, *series[4:]], "phases")
    with pytest.raises(InputError, match="takes 6 subtraction channels, these inputs give 5"):
        nodes.check_inputs(t1, series[:6], "phases", case["model"])
    with pytest.raises(InputError, match="a DCE volume selector is empty"):
        nodes.check_inputs(t1, [series[0], None], "phases")
    # the combination is checked by CaseInputs itself, naming the nodes
    with pytest.raises(InputError, match=r"^pre: phases need a pre-contrast and at least one post-contrast"):
        nodes.check_inputs(t1, series[:1], "phases")
    with pytest.raises(InputError, match=r"^inputs: a DCE volume selector is empty"):
        nodes.check_inputs(t1, [], "subtractions")
    # a T1 cropped on the reference's own voxel lattice is copied, not interpolated: no note
    cropped = nodes.volume_node_from_image(scene, sitk.ReadImage(str(case["dir"] / "t1.nrrd"))[4:90, 2:60, 3:],
                                          "cropped T1")
    assert nodes.check_inputs(cropped, series, "phases") == []


def test_sequence_frames_become_pre_and_posts():
    scene = slicer.vtkMRMLScene()
    sequence = slicer.vtkMRMLSequenceNode()
    sequence.SetName("DCE")
    scene.AddNode(sequence)
    for frame in range(5):
        node = nodes.volume_node_from_image(scene, oblique_image(), f"frame {frame}")
        sequence.SetDataNodeAtValue(node, str(frame))
    frames = nodes.sequence_volume_nodes(sequence, pre_index=1)
    assert [nodes.image_from_volume_node(n).GetSize() for n in frames] == [(7, 5, 4)] * 4
    assert [sequence.GetNthIndexValue(i) for i in range(1, 5)] == ["1", "2", "3", "4"]
    assert [f.GetName() for f in frames] == [sequence.GetNthDataNode(i).GetName() for i in range(1, 5)]
    with pytest.raises(InputError, match="DCE: pre-contrast frame 4 leaves no post-contrast"):
        nodes.sequence_volume_nodes(sequence, pre_index=4)


def test_follow_slice_keeps_each_compare_view_on_its_own_peak():
    scene = slicer.vtkMRMLScene()
    cam_view, coam_view = slicer.vtkMRMLSliceNode(), slicer.vtkMRMLSliceNode()
    for node, name in ((cam_view, "Red"), (coam_view, "Yellow")):
        node.SetLayoutName(name)
        node.SetDimensions(400, 300, 1)
        scene.AddNode(node)
    cam_peak, coam_peak = np.array([10.0, -42.5, 31.0]), np.array([-3.5, -30.0, 43.0])
    cam_view.SetFieldOfView(180.0, 135.0, 1.0)
    cam_view.JumpSliceByCentering(*cam_peak)
    coam_view.JumpSliceByCentering(*coam_peak)

    def slice_to_ras(node) -> np.ndarray:
        m = node.GetSliceToRAS()
        return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])

    # scroll and tilt the CAM view: the COAM view follows, still offset by the difference of the peaks
    tilted = np.eye(4)
    tilted[:3, :3] = rotation(0.2, 0.0, 0.1)
    tilted[:3, 3] = cam_peak + np.array([0.0, 0.0, 7.5])
    cam_view.GetSliceToRAS().DeepCopy(tilted.ravel())
    cam_view.UpdateMatrices()
    display.follow_slice(cam_view, coam_view, coam_peak - cam_peak)
    expected = tilted.copy()
    expected[:3, 3] = coam_peak + np.array([0.0, 0.0, 7.5])
    np.testing.assert_allclose(slice_to_ras(coam_view), expected, atol=1e-9)
    assert coam_view.GetFieldOfView() == pytest.approx((180.0, 135.0, 1.0))
    # and back: following the COAM view puts the CAM view on its own peak again
    display.follow_slice(coam_view, cam_view, cam_peak - coam_peak)
    np.testing.assert_allclose(slice_to_ras(cam_view), tilted, atol=1e-9)


def test_assign_by_dicom_maps_the_role_rules_back_to_nodes(tmp_path):
    def volume(seed: int) -> sitk.Image:
        image = sitk.GetImageFromArray(np.random.default_rng(seed).integers(0, 500, (6, 12, 10)).astype(np.int16))
        image.SetSpacing((2.0, 2.0, 3.0))
        return image

    written = write_study(tmp_path / "study", "duke", volume(0), volume(1), [volume(k) for k in range(2, 5)])
    descriptions = list(written)  # one node per series, in an order unlike the roles'
    order = [descriptions[i] for i in (3, 0, 4, 2, 1)]
    assigned = nodes.assign_by_dicom([written[d] for d in order], n_channels=3)
    assert assigned["inputs"] == "phases" and assigned["notes"] == []
    roles = [order[assigned["t1"]]] + [order[i] for i in assigned["series"]]
    assert roles == descriptions  # duke style writes t1, pre, 1st, 2nd, 3rd pass in this order
    with pytest.raises(InputError, match="expected 4 post-contrast phases after pre-contrast series 200"):
        nodes.assign_by_dicom([written[d] for d in order], n_channels=4)


def test_an_evaluation_table_saved_before_the_fine_map_gains_its_column():
    """A table with the columns case, probability, COAM mm, CAM mm (as scenes saved before the fine map hold)
    gets a fine mm column, NaN for its earlier rows; the summary counts each map's own rows."""
    scene = slicer.vtkMRMLScene()
    table_node = slicer.vtkMRMLTableNode()
    scene.AddNode(table_node)
    case_column = vtk.vtkStringArray()
    case_column.SetName("case")
    case_column.InsertNextValue("old")
    table_node.GetTable().AddColumn(case_column)
    for name, value in (("probability", 0.7), ("COAM mm", 30.0), ("CAM mm", 40.0)):
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        column.InsertNextValue(value)
        table_node.GetTable().AddColumn(column)
    centre = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(centre)
    centre.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0), "centre")
    peaks = {"coam": [10.0, 0.0, 0.0], "cam": [0.0, 20.0, 0.0], "fine": [3.0, 4.0, 0.0]}
    evaluation = centres.centre_distances(scene, "new", 0.4, peaks, centre, table_node)
    row = evaluation["row"]
    assert {k: row[k] for k in centres.TABLE_COLUMNS[:5]} == {"case": "new", "probability": 0.4, "COAM mm": 10.0,
                                                               "CAM mm": 20.0, "fine mm": 5.0}
    rows = centres.table_records(table_node)
    assert [r["case"] for r in rows] == ["old", "new"] and np.isnan(rows[0]["fine mm"])
    # no kinetics given: empty words and NaN numbers, in the new row and in the old table's earlier row
    assert [r["initial rise"] for r in rows] == ["", ""] and all(np.isnan(r["FTV mL"]) for r in rows)
    summary = evaluation["summary"]
    assert summary["n"] == 2 and summary["coam_n"] == 2 and summary["fine_n"] == 1
    assert summary["coam_mean_mm"] == pytest.approx(20.0) and summary["coam_std_mm"] == pytest.approx(10.0)
    assert summary["fine_mean_mm"] == pytest.approx(5.0) and summary["fine_std_mm"] == 0.0
