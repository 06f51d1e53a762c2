"""BreastCMSLLib.mrml on a real vtkMRMLScene (slicer-core wheel): geometry, analyze_nodes, evaluation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from BreastCMSLLib import background, cli, mrml
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.phantom import synth_case
from Testing.dicomsynth import write_study

ROOT = Path(__file__).resolve().parent.parent


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_image(size=(7, 5, 4), spacing=(0.8, 1.3, 2.7), origin=(-31.5, 12.25, 40.0)) -> sitk.Image:
    array = np.random.default_rng(3).normal(size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(rotation(0.3, -0.2, 0.5).ravel().tolist())
    return image


def matrix_of(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_image_to_node_places_every_voxel_at_its_lps_point_negated():
    scene = slicer.vtkMRMLScene()
    image = oblique_image()
    node = mrml.volume_node_from_image(scene, image, "oblique")
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

    image = mrml.image_from_volume_node(node)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image).ravel(), values)
    lps = np.diag([-1, -1, 1]) @ ijk_to_ras[:3]
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((5, 3, 2)), lps @ [5, 3, 2, 1], atol=1e-9)

    back = mrml.volume_node_from_image(scene, image, "back")
    np.testing.assert_allclose(matrix_of(back), ijk_to_ras, atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(node))

    label = mrml.volume_node_from_image(scene, sitk.Cast(image > 0, sitk.sitkUInt8), "label", labelmap=True)
    assert label.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_allclose(matrix_of(label), ijk_to_ras, atol=1e-6)


def test_linear_parent_transform_is_applied():
    scene = slicer.vtkMRMLScene()
    node = mrml.volume_node_from_image(scene, oblique_image(), "moved")
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
    image = mrml.image_from_volume_node(node)
    np.testing.assert_allclose(mrml.ijk_to_ras_of_image(image), to_parent @ local, atol=1e-9)


# ---- analyze_nodes, check_inputs and centre_distances on a phantom case (nodes read by MRML's own reader)

OBLIQUE = tuple(rotation(0.12, -0.08, 0.2).ravel())


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small oblique phantom case, an untrained small model, and the real CLI's analysis of the case."""
    root = tmp_path_factory.mktemp("mrml")
    case_dir, model, out = root / "case", root / "model.safetensors", root / "cli_out"
    synth_case(case_dir, seed=5, label=1, shape=(96, 64, 40), spacing=(3.5, 3.2, 3.8), origin=(80.0, 60.0, -30.0),
               direction=OBLIQUE)
    assert cli.main(["init-model", "--out", str(model), "--input-size", "64", "48", "32",
                     "--width-factor", "0.125"]) == 0
    run = subprocess.run([sys.executable, "-m", "BreastCMSLLib.cli", "analyze", str(case_dir), "--model", str(model),
                          "--out", str(out), "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return {"dir": case_dir, "model": model, "out": out, "result": json.loads((out / "result.json").read_text()),
            "truth": json.loads((case_dir / "case.json").read_text())}


def read_node(scene, path: Path):
    """A volume node read by MRML's own storage node (not by the adapter under test)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(path.name.split(".")[0])
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def case_nodes(scene, case_dir: Path):
    t1 = read_node(scene, case_dir / "t1.nrrd")
    series = [read_node(scene, case_dir / "pre.nrrd")] + [read_node(scene, case_dir / f"post_{k}.nrrd")
                                                          for k in range(1, 7)]
    return t1, series


@pytest.fixture(scope="module")
def analyzed(case):
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, case["dir"])
    count = scene.GetNumberOfNodes()
    result = mrml.analyze_nodes(scene, t1, series, case["model"], inputs="phases", device="cpu")
    return {"scene": scene, "t1": t1, "series": series, "result": result, "added": scene.GetNumberOfNodes() - count}


def test_analyze_nodes_adds_maps_on_the_reference_grid(case, analyzed):
    scene, result = analyzed["scene"], analyzed["result"]
    reference = analyzed["series"][1]  # the first post-contrast phase
    ids = result["node_ids"]
    expected = {"coam_volume": "vtkMRMLScalarVolumeNode", "cam_volume": "vtkMRMLScalarVolumeNode",
                "coam_label": "vtkMRMLLabelMapVolumeNode", "cam_label": "vtkMRMLLabelMapVolumeNode",
                "peaks": "vtkMRMLMarkupsFiducialNode"}
    assert {k: scene.GetNodeByID(v).GetClassName() for k, v in ids.items()} == expected
    for key in ("coam", "cam"):
        heat, label = scene.GetNodeByID(ids[f"{key}_volume"]), scene.GetNodeByID(ids[f"{key}_label"])
        for node in (heat, label):
            np.testing.assert_allclose(matrix_of(node), matrix_of(reference), atol=1e-6)
            assert node.GetImageData().GetDimensions() == reference.GetImageData().GetDimensions()
        values = slicer.util.arrayFromVolume(heat)
        assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() == pytest.approx(1.0)
        labels = slicer.util.arrayFromVolume(label)
        assert set(np.unique(labels).tolist()) == {0, 1}
        # the labelmap is the map thresholded at label_fraction x max, and both equal the CLI's files
        np.testing.assert_array_equal(labels, (values >= 0.5 * values.max()).astype(np.uint8))
        cli_map = sitk.GetArrayFromImage(sitk.ReadImage(str(case["out"] / f"{key}.nrrd")))
        np.testing.assert_allclose(values, cli_map, atol=1e-5)
        np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(
            sitk.ReadImage(str(case["out"] / f"{key}_label.nrrd"))))
        display = heat.GetDisplayNode()
        assert display.GetColorNode().GetName() == "Inferno"
        assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)


def test_analyze_nodes_peaks_are_the_cli_peaks_in_ras(case, analyzed):
    result, cli_result = analyzed["result"], case["result"]
    assert result["probability"] == pytest.approx(cli_result["probability"], abs=1e-6)
    assert result["cos_theta"] == pytest.approx(cli_result["cos_theta"], abs=1e-6)
    assert result["prediction"] == cli_result["prediction"]
    points = analyzed["scene"].GetNodeByID(result["node_ids"]["peaks"])
    assert points.GetNumberOfControlPoints() == 2
    for index, key in enumerate(("coam", "cam")):
        x, y, z = cli_result[f"{key}_peak_lps"]
        np.testing.assert_allclose(result[f"{key}_peak_ras"], [-x, -y, z], atol=1e-6)
        position = np.zeros(3)
        points.GetNthControlPointPosition(index, position)
        np.testing.assert_allclose(position, [-x, -y, z], atol=1e-6)
        assert points.GetNthControlPointLabel(index) == f"{key.upper()} peak"


def test_heat_colour_table_is_perceptually_ordered(analyzed):
    scene = analyzed["scene"]
    heat = scene.GetNodeByID(analyzed["result"]["node_ids"]["coam_volume"]).GetDisplayNode().GetColorNode()
    function = heat.GetColorTransferFunction()
    rgb = np.array([function.GetColor(t) for t in np.linspace(0, 1, 33)])
    luminance = rgb @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(luminance) > 0), "lightness must rise monotonically with the map value"
    np.testing.assert_allclose(rgb[0], mrml.INFERNO_STOPS[0], atol=1e-4)
    np.testing.assert_allclose(rgb[-1], mrml.INFERNO_STOPS[-1], atol=1e-4)
    assert len([n for n in range(scene.GetNumberOfNodes())
                if scene.GetNthNode(n).GetName() == "Inferno"]) == 1


def snapshot(scene, nodes) -> dict:
    return {"count": scene.GetNumberOfNodes(),
            "ids": [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())],
            "arrays": [slicer.util.arrayFromVolume(n).copy() for n in nodes],
            "matrices": [matrix_of(n) for n in nodes],
            "mtimes": [n.GetImageData().GetMTime() for n in nodes]}


def assert_unchanged(before: dict, after: dict):
    assert after["count"] == before["count"] and after["ids"] == before["ids"]
    for a, b in zip(before["arrays"], after["arrays"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before["matrices"], after["matrices"]):
        np.testing.assert_array_equal(a, b)
    assert after["mtimes"] == before["mtimes"]


def test_failing_run_leaves_scene_and_inputs_unchanged(case, tmp_path):
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, case["dir"])
    nodes = [t1, *series]
    before = snapshot(scene, nodes)
    wrong = tmp_path / "four_channels.safetensors"
    assert cli.main(["init-model", "--out", str(wrong), "--input-size", "64", "48", "32", "--width-factor", "0.125",
                     "--channels", "4"]) == 0
    with pytest.raises(InputError, match="takes 4 subtraction channels, these inputs give 6"):
        mrml.analyze_nodes(scene, t1, series, wrong, inputs="phases", device="cpu")
    assert_unchanged(before, snapshot(scene, nodes))
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InputError, match="pickle"):
        mrml.analyze_nodes(scene, t1, series, pickle, inputs="phases", device="cpu")
    assert_unchanged(before, snapshot(scene, nodes))


def test_adding_results_is_all_or_nothing(case):
    scene = slicer.vtkMRMLScene()
    maps = {name: sitk.ReadImage(str(case["out"] / f"{name}.nrrd")) for name in ("coam", "cam", "coam_label")}
    count = scene.GetNumberOfNodes()
    with pytest.raises(KeyError, match="cam_label"):  # fails after the COAM nodes and the CAM map were added
        mrml.add_result_nodes(scene, "broken", maps, {"coam": (0, 0, 0), "cam": (0, 0, 0)})
    assert scene.GetNumberOfNodes() == count


def test_load_result_folder_equals_in_process_result(case, analyzed):
    scene = slicer.vtkMRMLScene()
    loaded = mrml.load_result_folder(scene, case["out"], "from CLI")
    result = analyzed["result"]
    for key in ("probability", "cos_theta", "prediction", "coam_peak_ras", "cam_peak_ras", "label_fraction"):
        assert loaded[key] == pytest.approx(result[key], abs=1e-6)
    np.testing.assert_allclose(matrix_of(scene.GetNodeByID(loaded["node_ids"]["coam_volume"])),
                               matrix_of(analyzed["series"][1]), atol=1e-6)


def test_centre_distances_against_numpy_and_csv(case, analyzed, tmp_path):
    scene, result = analyzed["scene"], analyzed["result"]
    peaks_ras = {k: np.array(case["result"][f"{k}_peak_lps"]) * [-1, -1, 1] for k in ("coam", "cam")}
    truth_ras = np.array(case["truth"]["center_lps"]) * [-1, -1, 1]
    centres = [truth_ras, truth_ras + np.array([4.0, -3.0, 12.0])]
    table = None
    for centre in centres:
        markups = slicer.vtkMRMLMarkupsFiducialNode()
        scene.AddNode(markups)
        markups.AddControlPoint(vtk.vtkVector3d(*centre), "centre")
        evaluation = mrml.centre_distances(scene, result, markups, table)
        table = scene.GetNodeByID(evaluation["table_id"])
        expected = {k: float(np.sqrt(((centre - peaks_ras[k]) ** 2).sum())) for k in ("coam", "cam")}
        assert evaluation["row"]["COAM mm"] == pytest.approx(expected["coam"], abs=1e-6)
        assert evaluation["row"]["CAM mm"] == pytest.approx(expected["cam"], abs=1e-6)
    # the CLI's own distance to the truth centre (computed in LPS) equals the first row
    assert table.GetTable().GetValueByName(0, "COAM mm").ToDouble() == pytest.approx(
        case["result"]["coam_distance_mm"], abs=1e-6)
    coam = [float(np.linalg.norm(c - peaks_ras["coam"])) for c in centres]
    cam = [float(np.linalg.norm(c - peaks_ras["cam"])) for c in centres]
    summary = evaluation["summary"]
    assert summary["n"] == 2 and table.GetNumberOfRows() == 2
    assert summary["coam_mean_mm"] == pytest.approx(np.mean(coam)) and summary["coam_std_mm"] == pytest.approx(
        np.std(coam))
    assert summary["cam_mean_mm"] == pytest.approx(np.mean(cam)) and summary["cam_std_mm"] == pytest.approx(
        np.std(cam))

    path = mrml.save_table_csv(table, tmp_path / "evaluation.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == [result["case"]] * 2
    np.testing.assert_allclose([float(r["COAM mm"]) for r in rows], coam, rtol=1e-5)  # CSV: 6 digits
    np.testing.assert_allclose([float(r["probability"]) for r in rows], result["probability"], rtol=1e-5)

    empty = slicer.vtkMRMLMarkupsFiducialNode()
    empty.SetName("no centre")
    scene.AddNode(empty)
    with pytest.raises(InputError, match="no centre: has no control point"):
        mrml.centre_distances(scene, result, empty, table)
    assert table.GetNumberOfRows() == 2
    other = slicer.vtkMRMLTableNode()
    other.SetName("some table")
    scene.AddNode(other)
    with pytest.raises(InputError, match="some table: is not a BreastCMSL evaluation table"):
        mrml.centre_distances(scene, result, markups, other)


def test_check_inputs_reports_before_running(case, tmp_path):
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, case["dir"])
    assert mrml.check_inputs(t1, series, "phases", case["model"]) == []
    # the T1 on a coarser grid in the same space: resampled, reported
    coarse = sitk.Resample(sitk.ReadImage(str(case["dir"] / "t1.nrrd")), [48, 32, 20], sitk.Transform(),
                           sitk.sitkLinear, sitk.ReadImage(str(case["dir"] / "t1.nrrd")).GetOrigin(),
                           [7.0, 6.4, 7.6], OBLIQUE)
    coarse_node = mrml.volume_node_from_image(scene, coarse, "coarse T1")
    notes = mrml.check_inputs(coarse_node, series, "phases")
    assert len(notes) == 1 and notes[0].startswith("coarse T1: on another grid")
    # a post-contrast phase somewhere else: an error naming the node
    far = sitk.ReadImage(str(case["dir"] / "post_3.nrrd"))
    far.SetOrigin([o + 2000.0 for o in far.GetOrigin()])
    far_node = mrml.volume_node_from_image(scene, far, "far post")
    with pytest.raises(InputError, match="far post: does not overlap"):
        mrml.check_inputs(t1, [*series[:3], far_node, *series[4:]], "phases")
    with pytest.raises(InputError, match="takes 6 subtraction channels, these inputs give 5"):
        mrml.check_inputs(t1, series[:6], "phases", case["model"])
    with pytest.raises(InputError, match="a volume selector is empty"):
        mrml.check_inputs(t1, [series[0], None], "phases")
    # the combination is checked by CaseInputs itself, naming the nodes
    with pytest.raises(InputError, match=r"^pre: phases need a pre-contrast and at least one post-contrast"):
        mrml.check_inputs(t1, series[:1], "phases")
    with pytest.raises(InputError, match=r"^t1: no subtraction volumes given"):
        mrml.check_inputs(t1, [], "subtractions")
    # a T1 cropped on the reference's own voxel lattice is copied, not interpolated: no note
    cropped = mrml.volume_node_from_image(scene, sitk.ReadImage(str(case["dir"] / "t1.nrrd"))[4:90, 2:60, 3:],
                                          "cropped T1")
    assert mrml.check_inputs(cropped, series, "phases") == []


def test_sequence_frames_become_pre_and_posts():
    scene = slicer.vtkMRMLScene()
    sequence = slicer.vtkMRMLSequenceNode()
    sequence.SetName("DCE")
    scene.AddNode(sequence)
    for frame in range(5):
        node = mrml.volume_node_from_image(scene, oblique_image(), f"frame {frame}")
        sequence.SetDataNodeAtValue(node, str(frame))
    frames = mrml.sequence_volume_nodes(sequence, pre_index=1)
    assert [mrml.image_from_volume_node(n).GetSize() for n in frames] == [(7, 5, 4)] * 4
    assert [sequence.GetNthIndexValue(i) for i in range(1, 5)] == ["1", "2", "3", "4"]
    assert [f.GetName() for f in frames] == [sequence.GetNthDataNode(i).GetName() for i in range(1, 5)]
    with pytest.raises(InputError, match="DCE: pre-contrast frame 4 leaves no post-contrast"):
        mrml.sequence_volume_nodes(sequence, pre_index=4)


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
    mrml.follow_slice(cam_view, coam_view, coam_peak - cam_peak)
    expected = tilted.copy()
    expected[:3, 3] = coam_peak + np.array([0.0, 0.0, 7.5])
    np.testing.assert_allclose(slice_to_ras(coam_view), expected, atol=1e-9)
    assert coam_view.GetFieldOfView() == pytest.approx((180.0, 135.0, 1.0))
    # and back: following the COAM view puts the CAM view on its own peak again
    mrml.follow_slice(coam_view, cam_view, cam_peak - coam_peak)
    np.testing.assert_allclose(slice_to_ras(cam_view), tilted, atol=1e-9)


def test_assign_by_dicom_maps_the_role_rules_back_to_nodes(tmp_path):
    def volume(seed: int) -> sitk.Image:
        image = sitk.GetImageFromArray(np.random.default_rng(seed).integers(0, 500, (6, 12, 10)).astype(np.int16))
        image.SetSpacing((2.0, 2.0, 3.0))
        return image

    written = write_study(tmp_path / "study", "duke", volume(0), volume(1), [volume(k) for k in range(2, 5)])
    descriptions = list(written)  # one node per series, in an order unlike the roles'
    order = [descriptions[i] for i in (3, 0, 4, 2, 1)]
    assigned = mrml.assign_by_dicom([written[d] for d in order], n_channels=3)
    assert assigned["inputs"] == "phases" and assigned["notes"] == []
    roles = [order[assigned["t1"]]] + [order[i] for i in assigned["series"]]
    assert roles == descriptions  # duke style writes t1, pre, 1st, 2nd, 3rd pass in this order
    with pytest.raises(InputError, match="expected 4 post-contrast phases after pre-contrast series 200"):
        mrml.assign_by_dicom([written[d] for d in order], n_channels=4)


def progress_stages(text: str) -> list[tuple[float, str]]:
    """Every (fraction, stage) that ``breastcmsl analyze`` reported in a log, in order."""
    stages = [background.split_progress(line)[1] for line in text.splitlines()]
    return [stage for stage in stages if stage is not None]


def test_background_analyze_path_of_the_module(analyzed, case, tmp_path):
    """What the module's Analyze button does: export the nodes, run the CLI in a background process, load
    its folder; equal to the in-process analysis. A run cancelled while it computes leaves no process, no
    output (not even a staging folder) and the scene as it was."""
    scene, t1, series = analyzed["scene"], analyzed["t1"], analyzed["series"]
    t1_path, series_paths = mrml.export_input_nodes(t1, series, tmp_path / "inputs")
    for node, path in zip([t1, *series], [t1_path, *series_paths]):
        np.testing.assert_allclose(mrml.ijk_to_ras_of_image(sitk.ReadImage(str(path))), matrix_of(node), atol=1e-9)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = background.analyze_command(sys.executable, t1_path, series_paths, "phases", case["model"],
                                         tmp_path / "out", "cpu")

    before = snapshot(scene, [t1, *series])
    cancelled = background.BackgroundCommand(command, tmp_path / "cancel.log", env=env, cwd=tmp_path)
    cancelled.start()
    seen, deadline = [], time.monotonic() + 120
    while not {"read", "preprocess", "inference"} & {stage for _, stage in seen}:  # torch imported, working
        assert cancelled.poll() is None and time.monotonic() < deadline, cancelled.read_output()
        time.sleep(0.01)
        seen += progress_stages(cancelled.read_output())
    os.killpg(cancelled.process.pid, 0)  # alive until cancelled
    cancelled.cancel()
    assert cancelled.cancelled and cancelled.poll() == -9
    with pytest.raises(ProcessLookupError):  # its process group (the whole tree) is gone
        os.killpg(cancelled.process.pid, 0)
    seen += progress_stages(cancelled.read_output())
    assert "write" not in {stage for _, stage in seen}, "killed too late to test a cancel before writing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cancel.log", "inputs"]  # no out, no .out.tmp-*
    assert_unchanged(before, snapshot(scene, [t1, *series]))

    job = background.BackgroundCommand(command, tmp_path / "job.log", env=env, cwd=tmp_path)
    job.start()
    assert job.wait(300) == 0, job.read_output()
    stages = progress_stages(job.read_output())
    assert [stage for _, stage in stages] == ["read", "preprocess", "inference", "maps", "write", "done"]
    fractions = [fraction for fraction, _ in stages]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and np.all(np.diff(fractions) > 0)
    loaded = mrml.load_result_folder(scene, tmp_path / "out", "background")
    result = analyzed["result"]
    assert loaded["probability"] == pytest.approx(result["probability"], abs=1e-6)
    np.testing.assert_allclose(loaded["coam_peak_ras"], result["coam_peak_ras"], atol=1e-6)
    np.testing.assert_allclose(loaded["cam_peak_ras"], result["cam_peak_ras"], atol=1e-6)
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(scene.GetNodeByID(loaded["node_ids"]["coam_label"])),
        slicer.util.arrayFromVolume(scene.GetNodeByID(result["node_ids"]["coam_label"])))
