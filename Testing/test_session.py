"""The panel's session (BreastCMSLLib.panel.session) on a real vtkMRMLScene: each button's path, end to end.

Analyze runs in the session's real worker process; its result must equal the real CLI's output for the same
case (an oblique phantom, nodes read by MRML's own reader), land exactly on the reference node's grid, survive
saving and loading the scene, and leave the scene untouched when cancelled or failing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import torch

from BreastCMSLLib import cli
from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.mrml import display, nodes
from BreastCMSLLib.panel.models import models_in
from BreastCMSLLib.panel.session import Session
from BreastCMSLLib.panel.state import CALIBRATION_KEYS, AnalysisResult
from BreastCMSLLib.panel.text import UNCALIBRATED, evaluation_rows_text, evaluation_text, result_text
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case, synth_case, write_case
from Testing.dicomsynth import write_study
from Testing.scenes import assert_unchanged, case_nodes, make_oblique_case, matrix_of, snapshot

STAGES = ["read", "preprocess", "inference", "maps", "write", "done"]
GUI_SETTINGS = {"device": "auto", "labelFraction": "0.5"}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return make_oblique_case(tmp_path_factory.mktemp("session"))


@pytest.fixture(scope="module")
def analyzed(case, tmp_path_factory):
    """A session that analyzed the case twice (cold, then warm) and is still open."""
    temp = tmp_path_factory.mktemp("session_tmp")
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, case["dir"])
    session = Session(scene, temp_dir=temp)
    session.set_inputs(t1=t1, phases=series)
    count = scene.GetNumberOfNodes()
    cold_job = session.analyze(case["model"], device="cpu")
    cold = cold_job.wait(timeout=300)
    added = scene.GetNumberOfNodes() - count
    for name, value in GUI_SETTINGS.items():  # what the Slicer module's parameter wrapper keeps on the same node
        session.parameter_node.SetParameter(name, value)
    warm_job = session.analyze(case["model"], device="auto", label_fraction=0.5)
    warm = warm_job.wait(timeout=300)
    yield {"scene": scene, "session": session, "t1": t1, "series": series, "cold": cold, "warm": warm,
           "cold_job": cold_job, "warm_job": warm_job, "added": added, "temp": temp}
    session.close()


def test_analyze_reports_its_stages_in_order(analyzed):
    for job in (analyzed["cold_job"], analyzed["warm_job"]):
        assert [stage for _, stage in job.stages] == STAGES
        fractions = [fraction for fraction, _ in job.stages]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0 and np.all(np.diff(fractions) > 0)
        assert job.progress == (1.0, "done") and job.done
        log = job.read_log()  # the module's Log box: every stage once, in order
        assert [line.split(" (")[0] for line in log.splitlines()] == STAGES and job.read_log() == ""


def test_result_nodes_lie_exactly_on_the_reference_grid_and_equal_the_cli(case, analyzed):
    scene, result = analyzed["scene"], analyzed["cold"]
    reference = analyzed["series"][1]  # the first post-contrast phase
    ids = result.nodes
    assert ids["reference"] == reference.GetID()
    expected = {**{f"{m}_volume": "vtkMRMLScalarVolumeNode" for m in MAP_NAMES},
                **{f"{m}_label": "vtkMRMLLabelMapVolumeNode" for m in MAP_NAMES}, "peaks": "vtkMRMLMarkupsFiducialNode"}
    assert {k: scene.GetNodeByID(ids[k]).GetClassName() for k in expected} == expected
    assert result.maps == MAP_NAMES
    peaks = scene.GetNodeByID(ids["peaks"])
    assert [peaks.GetNthControlPointLabel(i) for i in range(peaks.GetNumberOfControlPoints())] == [
        "COAM peak", "CAM peak", "FINE peak"]
    for key in MAP_NAMES:
        heat, label = scene.GetNodeByID(ids[f"{key}_volume"]), scene.GetNodeByID(ids[f"{key}_label"])
        for node in (heat, label):
            np.testing.assert_allclose(matrix_of(node), matrix_of(reference), atol=1e-6)
            assert node.GetImageData().GetDimensions() == reference.GetImageData().GetDimensions()
        values = slicer.util.arrayFromVolume(heat)
        assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() == pytest.approx(1.0)
        labels = slicer.util.arrayFromVolume(label)
        np.testing.assert_array_equal(labels, (values >= 0.5 * values.max()).astype(np.uint8))
        np.testing.assert_allclose(values, sitk.GetArrayFromImage(sitk.ReadImage(str(case["out"] / f"{key}.nrrd"))),
                                   atol=1e-5)
        heat_display = heat.GetDisplayNode()
        assert heat_display.GetColorNode().GetName() == "Inferno"
        assert (heat_display.GetWindowLevelMin(), heat_display.GetWindowLevelMax()) == (0.0, 1.0)
        x, y, z = case["result"][f"{key}_peak_lps"]
        np.testing.assert_allclose(result.peaks_ras[key], [-x, -y, z], atol=1e-6)
    cli_result = case["result"]
    assert result.probability == pytest.approx(cli_result["probability"], abs=1e-6)
    assert result.cos_theta == pytest.approx(cli_result["cos_theta"], abs=1e-6)
    assert result.prediction == cli_result["prediction"]
    assert result.model["sha256"] == hashlib.sha256(case["model"].read_bytes()).hexdigest()
    assert result.model["untrained"] is True
    assert result.device == "cpu" and result.label_fraction == 0.5
    assert result.calibrated is False and result.probability_uncalibrated == pytest.approx(result.probability)
    assert result.operating_line == cli_result["operating_line"] and result.threshold == cli_result["threshold"]
    # 3 heat volumes, 3 labelmaps, the peaks point list, their 7 display nodes, the heat colour table and the 3
    # labelmap colour tables: nothing else (the inputs were not touched, no copies, no storage nodes)
    assert analyzed["added"] == 18


def test_analyze_on_auto_keeps_the_choice_and_records_the_device_used(analyzed):
    """The panel's settings (device "auto") are not the result's fields (the device the analysis ran on)."""
    p, warm = analyzed["session"].parameter_node, analyzed["warm"]
    assert {name: p.GetParameter(name) for name in GUI_SETTINGS} == GUI_SETTINGS
    assert warm.device.split(":")[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert p.GetParameter("Result.device") == f'"{warm.device}"'


def test_heat_colour_table_is_perceptually_ordered(analyzed):
    scene = analyzed["scene"]
    heat = scene.GetNodeByID(analyzed["cold"].nodes["coam_volume"]).GetDisplayNode().GetColorNode()
    rgb = np.array([heat.GetColorTransferFunction().GetColor(t) for t in np.linspace(0, 1, 33)])
    assert np.all(np.diff(rgb @ [0.2126, 0.7152, 0.0722]) > 0), "lightness must rise with the map value"
    np.testing.assert_allclose(rgb[0], display.INFERNO_STOPS[0], atol=1e-4)
    np.testing.assert_allclose(rgb[-1], display.INFERNO_STOPS[-1], atol=1e-4)
    assert len([n for n in range(scene.GetNumberOfNodes()) if scene.GetNthNode(n).GetName() == "Inferno"]) == 1


def test_the_warm_second_run_reuses_the_worker_and_equals_the_cold_run(analyzed):
    cold, warm = analyzed["cold"], analyzed["warm"]
    assert analyzed["warm_job"].worker_pid == analyzed["cold_job"].worker_pid
    assert analyzed["session"].warm.worker.process.poll() is None  # still alive, waiting for the next analysis
    for key in ("probability", "cos_theta", "prediction", "label_fraction"):
        assert getattr(warm, key) == pytest.approx(getattr(cold, key), abs=1e-6)
    for name in MAP_NAMES:
        np.testing.assert_allclose(warm.peaks_ras[name], cold.peaks_ras[name], atol=1e-6)
    scene = analyzed["scene"]
    for key in ("coam_volume", "cam_label", "fine_volume", "fine_label"):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(scene.GetNodeByID(warm.nodes[key])),
                                      slicer.util.arrayFromVolume(scene.GetNodeByID(cold.nodes[key])))
    # the parameter node holds the latest result
    assert analyzed["session"].result == warm


def test_evaluation_against_a_hand_computation_and_csv(case, analyzed, tmp_path):
    session, result = analyzed["session"], analyzed["warm"]
    peaks_ras = {k: np.array(case["result"][f"{k}_peak_lps"]) * [-1, -1, 1] for k in MAP_NAMES}
    truth_ras = np.array(case["truth"]["center_lps"]) * [-1, -1, 1]
    centres = [truth_ras, truth_ras + np.array([4.0, -3.0, 12.0])]
    for centre in centres:
        session.set_lesion_centre(centre)
        evaluation = session.evaluate()
        assert evaluation["row"]["COAM mm"] == pytest.approx(np.linalg.norm(centre - peaks_ras["coam"]), abs=1e-6)
        assert evaluation["row"]["CAM mm"] == pytest.approx(np.linalg.norm(centre - peaks_ras["cam"]), abs=1e-6)
        assert evaluation["row"]["fine mm"] == pytest.approx(np.linalg.norm(centre - peaks_ras["fine"]), abs=1e-6)
    assert session.lesion_centre.GetNumberOfControlPoints() == 1
    rows = session.evaluation_rows()
    assert rows[0]["COAM mm"] == pytest.approx(case["result"]["coam_distance_mm"], abs=1e-6)  # the CLI's, in LPS
    coam = [float(np.linalg.norm(c - peaks_ras["coam"])) for c in centres]
    cam = [float(np.linalg.norm(c - peaks_ras["cam"])) for c in centres]
    fine = [float(np.linalg.norm(c - peaks_ras["fine"])) for c in centres]
    assert rows[0]["fine mm"] == pytest.approx(case["result"]["fine_distance_mm"], abs=1e-6)
    summary = evaluation["summary"]  # over the whole table
    assert summary["n"] == 2 and len(rows) == 2
    assert summary["coam_mean_mm"] == pytest.approx(np.mean(coam)) and summary["coam_std_mm"] == pytest.approx(
        np.std(coam))
    assert summary["cam_mean_mm"] == pytest.approx(np.mean(cam)) and summary["cam_std_mm"] == pytest.approx(np.std(cam))
    assert summary["fine_n"] == 2 and summary["fine_mean_mm"] == pytest.approx(np.mean(fine))
    assert summary["fine_std_mm"] == pytest.approx(np.std(fine))
    assert evaluation_text(summary) == (
        f"n = 2: COAM {np.mean(coam):.1f} ± {np.std(coam):.1f} mm, CAM {np.mean(cam):.1f} ± {np.std(cam):.1f} mm, "
        f"fine {np.mean(fine):.1f} ± {np.std(fine):.1f} mm (mean ± std)")
    path = session.save_table_csv(tmp_path / "evaluation.csv")
    with open(path, newline="") as f:
        saved = list(csv.DictReader(f))
    assert [r["case"] for r in saved] == [result.case] * 2
    np.testing.assert_allclose([float(r["COAM mm"]) for r in saved], coam, rtol=1e-5)
    np.testing.assert_allclose([float(r["fine mm"]) for r in saved], fine, rtol=1e-5)


def slice_views(scene, names=("Red", "Yellow")) -> list:
    """Slice nodes with their composite nodes, as a layout makes them."""
    views = []
    for name in names:
        view = slicer.vtkMRMLSliceNode()
        view.SetLayoutName(name)
        view.SetDimensions(400, 300, 1)
        scene.AddNode(view)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
        views.append(view)
    return views


def test_display_compare_and_jump_to_peak(analyzed):
    scene, session, result = analyzed["scene"], analyzed["session"], analyzed["warm"]
    views = slice_views(scene)
    session.show(views[:1], which="cam", opacity=0.3, outline=False)
    composite = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(views[0])
    ids = result.nodes
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetLabelVolumeID()) == (
        ids["reference"], ids["cam_volume"], ids["cam_label"])
    assert composite.GetForegroundOpacity() == pytest.approx(0.3) and not views[0].GetUseLabelOutline()

    cam_view, coam_view = views
    cam_view.SetFieldOfView(250.0, 187.5, 1.0)
    cam_view.SetSliceToRASByNTP(0, 0, 1, 1, 0, 0, 12.0, -20.0, 5.0, 0)  # a framing the face chose (axial)
    session.compare(*views)

    def origin(view) -> np.ndarray:
        m = view.GetSliceToRAS()
        return np.array([m.GetElement(r, 3) for r in range(3)])

    def in_plane(view) -> np.ndarray:
        m = view.GetSliceToRAS()
        return np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])

    cam, coam, fine = (np.array(result.peaks_ras[name]) for name in ("cam", "coam", "fine"))
    # both axial, one framing (the left view's), each on the slice through its own peak
    np.testing.assert_allclose(origin(cam_view), [12.0, -20.0, cam[2]], atol=1e-6)
    np.testing.assert_allclose(origin(coam_view), [12.0, -20.0, coam[2]], atol=1e-6)
    np.testing.assert_allclose(in_plane(coam_view), in_plane(cam_view), atol=1e-9)
    assert coam_view.GetFieldOfView() == pytest.approx(cam_view.GetFieldOfView())
    assert slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(coam_view).GetForegroundVolumeID() == ids["coam_volume"]
    cam_view.SetSliceOffset(cam_view.GetSliceOffset() + 7.0)  # scroll the CAM view: the COAM view follows
    np.testing.assert_allclose(origin(coam_view) - origin(cam_view), [0.0, 0.0, coam[2] - cam[2]], atol=1e-6)
    assert origin(cam_view)[2] == pytest.approx(cam[2] + 7.0)
    cam_view.SetFieldOfView(150.0, 112.5, 1.0)  # zoom the CAM view: the COAM view zooms too
    assert coam_view.GetFieldOfView() == pytest.approx((150.0, 112.5, 1.0))
    session.stop_compare()
    cam_view.SetSliceOffset(cam_view.GetSliceOffset() + 5.0)  # unlinked: the COAM view stays
    np.testing.assert_allclose(origin(coam_view)[2], coam[2] + 7.0, atol=1e-6)
    session.jump_to_peak([coam_view], "coam")
    np.testing.assert_allclose(origin(coam_view), coam, atol=1e-6)
    cam_view.SetSliceToRASByNTP(0, 0, 1, 1, 0, 0, 12.0, -20.0, 5.0, 0)
    session.jump_to_peak([cam_view], "cam", centred=False)  # the slice through the peak, the framing kept
    np.testing.assert_allclose(origin(cam_view), [12.0, -20.0, cam[2]], atol=1e-6)

    assert session.compare_pair() == ("coam", "fine")  # the faces' default once the fine map is there
    session.compare(*views, pair=session.compare_pair())
    left, right = views
    np.testing.assert_allclose(origin(left), [12.0, -20.0, coam[2]], atol=1e-6)
    np.testing.assert_allclose(origin(right), [12.0, -20.0, fine[2]], atol=1e-6)
    assert slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(right).GetForegroundVolumeID() == ids["fine_volume"]
    assert slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(right).GetLabelVolumeID() == ids["fine_label"]
    left.SetSliceOffset(left.GetSliceOffset() + 3.5)
    np.testing.assert_allclose(origin(right) - origin(left), [0.0, 0.0, fine[2] - coam[2]], atol=1e-6)
    session.stop_compare()
    session.show(views[:1], which="fine")
    assert composite.GetForegroundVolumeID() == ids["fine_volume"] and composite.GetLabelVolumeID() == ids["fine_label"]
    session.jump_to_peak([left], "fine")
    np.testing.assert_allclose(origin(left), fine, atol=1e-6)


def test_the_map_choices_stay_within_the_result(analyzed):
    """Both faces keep the overlay and the compare pair the session allows: a choice the result has stays."""
    session = analyzed["session"]
    assert session.map_choices("fine", ("cam", "fine")) == ("fine", ("cam", "fine"))
    assert session.map_choices("cam", ("fine", "coam")) == ("cam", ("fine", "coam"))


def test_every_peak_has_a_marker_on_every_slice(analyzed):
    """The peaks point list holds COAM, CAM and fine, each drawn on every slice view (projected when the
    slice does not pass through it), and a new centre empties the centre list before the click places it."""
    scene, session, result = analyzed["scene"], analyzed["session"], analyzed["warm"]
    peaks = scene.GetNodeByID(result.nodes["peaks"])
    assert peaks.GetNumberOfControlPoints() == 3
    for index, name in enumerate(MAP_NAMES):
        position = [0.0, 0.0, 0.0]
        peaks.GetNthControlPointPosition(index, position)
        np.testing.assert_allclose(position, result.peaks_ras[name], atol=1e-6)
        assert peaks.GetNthControlPointLabel(index) == f"{name.upper()} peak"
    assert peaks.GetDisplayNode().GetVisibility() and peaks.GetDisplayNode().GetSliceProjection()
    before = session.lesion_centre
    kept = None
    if before is not None and before.GetNumberOfControlPoints():
        kept = [0.0, 0.0, 0.0]
        before.GetNthControlPointPosition(0, kept)
    centre = session.set_lesion_centre([1.0, 2.0, 3.0])
    assert session.centre_to_place() is centre and centre.GetNumberOfControlPoints() == 0
    if kept is not None:  # the module's later tests go on with the centre placed before
        session.set_lesion_centre(kept)


def test_saved_and_reloaded_scene_shows_the_same_result_and_table(analyzed, tmp_path):
    session = analyzed["session"]
    if session.evaluation_table is None:
        session.set_lesion_centre([1.0, 2.0, 3.0])
        session.evaluate()
    before, rows = session.result, session.evaluation_rows()
    bundle = tmp_path / "scene.mrb"
    for scene in (analyzed["scene"], loaded_scene := slicer.vtkMRMLScene()):
        scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())  # as Slicer's Markups module does
    assert analyzed["scene"].WriteToMRB(str(bundle))
    io_manager, cache = slicer.vtkDataIOManager(), slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(tmp_path / "cache"))
    io_manager.SetCacheManager(cache)
    loaded_scene.SetDataIOManager(io_manager)
    assert loaded_scene.ReadFromMRB(str(bundle))
    loaded = Session(loaded_scene)
    after = loaded.result
    assert isinstance(after, AnalysisResult) and after == before  # every field, node IDs included
    _assert_same_rows(loaded.evaluation_rows(), rows)
    scene = analyzed["scene"]
    for key in ("coam_volume", "cam_label", "fine_volume", "fine_label"):
        original = scene.GetNodeByID(before.nodes[key])
        restored = loaded_scene.GetNodeByID(after.nodes[key])
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(restored), slicer.util.arrayFromVolume(original))
        np.testing.assert_allclose(matrix_of(restored), matrix_of(original), atol=1e-6)
    reference = loaded_scene.GetNodeByID(after.nodes["reference"])
    assert reference.GetName() == scene.GetNodeByID(before.nodes["reference"]).GetName()
    peaks = loaded_scene.GetNodeByID(after.nodes["peaks"])
    np.testing.assert_allclose(peaks.GetNthControlPointPosition(0), before.peaks_ras["coam"], atol=1e-3)
    np.testing.assert_allclose(loaded.lesion_centre.GetNthControlPointPosition(0),
                               analyzed["session"].lesion_centre.GetNthControlPointPosition(0), atol=1e-3)
    loaded.close()


def _assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["case"] for r in a] == [r["case"] for r in b]
    for x, y in zip(a, b):
        for key in ("probability", "COAM mm", "CAM mm", "fine mm"):
            assert x[key] == pytest.approx(y[key], rel=1e-5)  # the table's TSV keeps 6 digits


def test_cancel_kills_the_worker_leaves_the_scene_and_no_temporary_folder(case, tmp_path):
    """Cancel while the worker preprocesses: a larger case (1.75 mm, 8x the voxels) so that preprocessing lasts
    long enough on a loaded machine to be caught by a polling caller, as the panel's timer polls."""
    synth_case(tmp_path / "large", seed=5, label=1, shape=(192, 128, 80), spacing=(1.75, 1.6, 1.9))
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, tmp_path / "large")
    temp = tmp_path / "temp"
    temp.mkdir()
    session = Session(scene, temp_dir=temp)
    session.set_inputs(t1=t1, phases=series)
    session.parameter_node  # noqa: B018 (created before the snapshot: the session's own node)
    before = snapshot(scene, [t1, *series])
    job = session.analyze(case["model"], device="cpu")
    deadline = time.monotonic() + 120
    while job.progress[1] != "preprocess":
        assert not job.done and time.monotonic() < deadline, job.stages
        time.sleep(0.002)
    pid = job.worker_pid
    os.killpg(pid, 0)  # alive until cancelled
    job.cancel()
    with pytest.raises(ProcessLookupError):  # its whole process group is gone
        os.killpg(pid, 0)
    assert "write" not in [stage for _, stage in job.stages], "cancelled too late to test a cancel before writing"
    assert job.done and session.warm.worker is None
    with pytest.raises(InputError, match="cancelled"):
        job.poll()
    assert_unchanged(before, snapshot(scene, [t1, *series]))
    assert session.result is None
    assert [p.name for p in temp.iterdir() if not p.name.startswith("BreastCMSL-log-")] == []
    # the next analysis starts a new worker and works
    again = session.analyze(case["model"], device="cpu")
    assert again.worker_pid != pid
    assert 0.0 <= again.wait(timeout=300).probability <= 1.0
    assert [stage for _, stage in again.stages] == STAGES and session.result is not None
    session.close()
    assert again.worker.process.poll() is not None
    assert list(temp.iterdir()) == []


def test_a_failing_input_names_the_node_and_leaves_the_scene_unchanged(case, tmp_path):
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, case["dir"])
    broken = slicer.util.arrayFromVolume(series[3])
    kept = broken.copy()
    broken[:] = 0  # a blank phase (the phantom's voxels are integers, so no NaN)
    series[3].Modified()
    session = Session(scene, temp_dir=tmp_path)
    session.set_inputs(t1=t1, phases=series)
    before = snapshot(scene, [t1, *series])
    job = session.analyze(case["model"], device="cpu")
    with pytest.raises(InputError, match=r"^post_3: the volume is empty \(every voxel is 0.0\)$"):
        job.wait(timeout=300)
    with pytest.raises(InputError, match=r"^post_3: the volume is empty"):  # asked again: the same answer
        job.poll()
    assert_unchanged(before, snapshot(scene, [t1, *series]))
    wrong = tmp_path / "four.safetensors"
    assert cli.main(["init-model", "--out", str(wrong), "--input-size", "64", "48", "32", "--width-factor", "0.125",
                     "--channels", "4"]) == 0
    broken[:] = kept
    series[3].Modified()
    before = snapshot(scene, [t1, *series])
    pid = job.worker_pid
    job = session.analyze(wrong, device="cpu")
    with pytest.raises(InputError, match=r"^post_1: the model four takes 4 subtraction channels, these inputs give 6$"):
        job.wait(timeout=300)
    assert job.worker_pid == pid  # a user mistake does not cost the warm worker
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InputError, match="refusing to unpickle"):
        session.analyze(pickle, device="cpu").wait(timeout=300)
    assert_unchanged(before, snapshot(scene, [t1, *series]))
    assert session.result is None
    assert session.analyze(case["model"], device="cpu").wait(timeout=300).prediction == case["result"]["prediction"]
    session.close()


def test_the_worker_exits_after_its_idle_time_and_the_next_analysis_starts_another(case, tmp_path):
    scene = slicer.vtkMRMLScene()
    session = Session(scene, idle_timeout_s=1.5, temp_dir=tmp_path)
    session.load_case_folder(case["dir"])
    first = session.analyze(case["model"], device="cpu")
    first.wait(timeout=300)
    first.worker.process.wait(timeout=30)  # exits by itself
    second = session.analyze(case["model"], device="cpu")
    assert second.worker_pid != first.worker_pid
    assert second.wait(timeout=300).probability == pytest.approx(case["result"]["probability"], abs=1e-6)
    session.close()


def test_load_case_folder_makes_the_inputs(case):
    scene = slicer.vtkMRMLScene()
    session = Session(scene)
    loaded = session.load_case_folder(case["dir"])
    t1, series, kind = session.inputs()
    assert kind == "phases" and t1 is loaded["t1"] and series == loaded["series"] and len(series) == 7
    assert loaded["reference"] is series[1] and loaded["reference"].GetName() == "case post_1"
    np.testing.assert_allclose(loaded["center_lps"], case["truth"]["center_lps"])
    assert session.check_inputs(case["model"]) == []


def test_model_store_imports_refuses_pickles_downloads_with_sha256_and_clears(case, tmp_path):
    store = tmp_path / "models"
    session = Session(slicer.vtkMRMLScene(), model_dir=store)
    assert session.models() == []
    sha = hashlib.sha256(case["model"].read_bytes()).hexdigest()
    imported = session.import_model(case["model"])
    assert imported == store / f"model-{sha[:12]}.safetensors"
    [info] = session.models()
    assert (info["sha256"], info["short_sha"], info["untrained"], info["in_channels"]) == (sha, sha[:12], True, 6)
    assert models_in(store) == session.models()
    pickle = tmp_path / "evil.safetensors"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InputError, match="refusing to unpickle"):
        session.import_model(pickle)
    (store / "evil.safetensors").write_bytes(pickle.read_bytes())  # dropped in by hand: not listed
    assert [m["path"] for m in session.models()] == [str(imported)]
    entry = {"id": "demo", "version": "1", "url": case["model"].as_uri(), "sha256": "0" * 64}
    with pytest.raises(InputError, match="differs from the registry's"):
        session.download_model(entry)
    assert sorted(p.name for p in store.iterdir()) == ["evil.safetensors", imported.name]  # nothing left behind
    downloaded = session.download_model({**entry, "sha256": sha})
    assert downloaded == store / "demo-1.safetensors" and downloaded.read_bytes() == case["model"].read_bytes()
    assert session.clear_models() == 3 and session.models() == []


def test_readme_contract_rejects_analyze_without_inputs(case):
    session = Session(slicer.vtkMRMLScene())
    with pytest.raises(InputError, match="a DCE volume selector is empty"):
        session.analyze(case["model"])
    with pytest.raises(InputError, match="either phases or subtractions"):
        session.set_inputs(t1=None)


def test_auto_assign_by_names_and_by_dicom_headers(case, tmp_path):
    scene = slicer.vtkMRMLScene()
    session = Session(scene)
    image = sitk.ReadImage(str(case["dir"] / "pre.nrrd"))
    names = ["dyn post 3", "T1 non fs", "dyn post 1", "localizer", "dyn pre", "dyn post 2"]
    volumes = [nodes.volume_node_from_image(scene, image, name) for name in names]
    assert session.auto_assign(volumes, n_channels=3) == []
    t1, series, kind = session.inputs()
    assert kind == "phases" and t1.GetName() == "T1 non fs"
    assert [n.GetName() for n in series] == ["dyn pre", "dyn post 1", "dyn post 2", "dyn post 3"]
    # volumes loaded from DICOM: the role rules on their headers, whatever the node names say
    images = {name: sitk.ReadImage(str(case["dir"] / f"{name}.nrrd")) for name in ("t1", "pre", "post_1", "post_2")}
    written = write_study(tmp_path / "study", "duke", images["t1"], images["pre"], [images["post_1"], images["post_2"]])
    descriptions = list(written)  # t1, pre, 1st pass, 2nd pass
    order = [3, 0, 2, 1]
    loaded = [nodes.volume_node_from_image(scene, image, f"volume {i}") for i in order]
    assert session.auto_assign(loaded, [written[descriptions[i]] for i in order], n_channels=2) == []
    t1, series, kind = session.inputs()
    assert [t1, *series] == [loaded[order.index(i)] for i in range(4)]
    assert session.times.post_s is not None and len(session.times.post_s) == 2  # the headers' times, for kinetics


def test_load_dicom_study_reads_the_roles_into_nodes(case, tmp_path):
    images = {name: sitk.ReadImage(str(case["dir"] / f"{name}.nrrd"))
              for name in ("t1", "pre", *(f"post_{k}" for k in range(1, 7)))}
    write_study(tmp_path / "ge", "ge", images["t1"], images["pre"], [images[f"post_{k}"] for k in range(1, 7)])
    scene = slicer.vtkMRMLScene()
    session = Session(scene)
    loaded = session.load_dicom_study(tmp_path / "ge")
    assert loaded["kind"] == "phases" and len(loaded["series"]) == 7 and loaded["reference"] is loaded["series"][1]
    assert [row["role"] for row in loaded["roles"]] == ["t1", "pre", *(f"post_{k}" for k in range(1, 7))]
    assert session.inputs() == (loaded["t1"], loaded["series"], "phases")
    times = session.kinetics().kin.times.post_s  # the study's phase times reach the Kinetics section
    assert len(times) == 6 and times[0] == 0 and np.all(np.diff(times) > 0)
    for node, name in zip([loaded["t1"], *loaded["series"]], images):
        expected = images[name]
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(matrix_of(node)[:3, 3], np.array(expected.GetOrigin()) * [-1, -1, 1], atol=1e-4)
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="t1"):  # a phase named for the T1 and the pre-contrast role
        session.load_dicom_study(tmp_path / "ge", roles={"t1": "200:1", "pre": "200:1"})
    with pytest.raises(InputError, match=f"^{tmp_path / 'ge'}: give either sub or pre/post roles, not both$"):
        session.load_dicom_study(tmp_path / "ge", roles={"pre": "200:1", "sub": ["300"]})  # the CLI's words
    assert scene.GetNumberOfNodes() == count  # nothing added


def test_a_case_without_t1_analyzes_through_the_session(case, tmp_path):
    """No non-fat-suppressed T1: the mask comes from the pre-contrast phase, the panel says so."""
    phantom = make_case(7, PhantomConfig(label=1, shape=(96, 64, 40), spacing=(3.5, 3.5, 3.5)))
    write_case(phantom, tmp_path / "case", with_t1=False)
    session = Session(slicer.vtkMRMLScene(), temp_dir=tmp_path)
    loaded = session.load_case_folder(tmp_path / "case")
    assert loaded["t1"] is None and session.inputs()[0] is None and len(loaded["series"]) == 7
    result = session.analyze(case["model"], device="cpu").wait(timeout=300)
    assert result.mask_source == "pre"
    assert "breast mask from the pre-contrast phase" in result_text(result)["prediction"]
    session.close()


def test_a_worker_that_dies_fails_its_job_and_is_replaced(case, tmp_path):
    import signal

    scene = slicer.vtkMRMLScene()
    session = Session(scene, temp_dir=tmp_path)
    session.load_case_folder(case["dir"])
    session.parameter_node  # noqa: B018
    count = scene.GetNumberOfNodes()
    job = session.analyze(case["model"], device="cpu")
    os.kill(job.worker_pid, signal.SIGKILL)  # killed from outside (out of memory, a crash)
    with pytest.raises(InputError, match=r"^the analysis worker exited with code -9; its log: .*worker\.log"):
        job.wait(timeout=60)
    assert scene.GetNumberOfNodes() == count and session.result is None
    again = session.analyze(case["model"], device="cpu")
    assert again.worker_pid != job.worker_pid
    assert again.wait(timeout=300).probability == pytest.approx(case["result"]["probability"], abs=1e-6)
    session.close()


def test_overlay_off_window_level_and_a_new_case_retires_the_old_points(case, tmp_path):
    scene = slicer.vtkMRMLScene()
    session = Session(scene, temp_dir=tmp_path)
    session.load_case_folder(case["dir"])
    first = session.analyze(case["model"], device="cpu").wait(timeout=300)
    view = slicer.vtkMRMLSliceNode()
    view.SetLayoutName("Red")
    scene.AddNode(view)
    composite = slicer.vtkMRMLSliceCompositeNode()
    composite.SetLayoutName("Red")
    scene.AddNode(composite)
    session.show([view], None)  # overlay off: the reference alone
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetLabelVolumeID()) == (
        first.nodes["reference"], None, None)
    session.set_window_level(400.0, 150.0)
    reference_display = scene.GetNodeByID(first.nodes["reference"]).GetDisplayNode()
    assert (reference_display.GetWindow(), reference_display.GetLevel()) == (400.0, 150.0)
    assert not reference_display.GetAutoWindowLevel()
    session.set_lesion_centre([1.0, 2.0, 3.0])
    second = session.analyze(case["model"], device="cpu").wait(timeout=300)  # a new result: the old peaks hide
    peaks = [scene.GetNodeByID(r.nodes["peaks"]).GetDisplayNode() for r in (first, second)]
    assert [p.GetVisibility() for p in peaks] == [0, 1]
    assert session.lesion_centre.GetNumberOfControlPoints() == 1  # the same case: its centre stays
    session.load_case_folder(case["dir"])  # another case loaded: the peaks hide, the centre is cleared
    assert peaks[1].GetVisibility() == 0 and session.lesion_centre.GetNumberOfControlPoints() == 0
    session.close()


def test_a_result_without_the_fine_map_or_calibration_reads_back_and_displays(case, tmp_path):
    """A result folder and a parameter node as an earlier version wrote them (no fine map, no calibration
    fields): the session reads them, shows COAM and CAM, offers no fine map and evaluates with an empty fine
    distance."""
    old = tmp_path / "old_out"
    old.mkdir()
    output = json.loads((case["out"] / "result.json").read_text())
    for key in ("fine_peak_lps", "fine_map", "fine_distance_mm", *CALIBRATION_KEYS, "temperature"):
        output.pop(key, None)
    (old / "result.json").write_text(json.dumps(output))
    for name in ("coam", "cam", "coam_label", "cam_label"):
        shutil.copy(case["out"] / f"{name}.nrrd", old / f"{name}.nrrd")
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, case["dir"])
    session = Session(scene, temp_dir=tmp_path)
    session.set_inputs(t1=t1, phases=series)
    written = session.add_result("old case", series[1], old)
    p = session.parameter_node
    for key in CALIBRATION_KEYS:  # an older scene's parameter node has none of these parameters
        p.UnsetParameter(f"Result.{key}")
    result = session.result
    assert result == written and result.maps == ("coam", "cam")
    assert result.nodes["fine_volume"] is None and result.nodes["fine_label"] is None
    assert not result.calibrated and result.probability_uncalibrated is None
    text = result_text(result)
    assert text["maps"] == "COAM, CAM" and text["calibration"] == "uncalibrated"
    assert text["operating_line"] == UNCALIBRATED
    views = slice_views(scene)
    session.show(views[:1], "coam")
    composite = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(views[0])
    assert composite.GetForegroundVolumeID() == result.nodes["coam_volume"]
    with pytest.raises(InputError, match="this result has no fine map"):
        session.show(views[:1], "fine")
    assert composite.GetForegroundVolumeID() == result.nodes["coam_volume"]  # unchanged by the refusal
    assert session.compare_pair() == ("cam", "coam")
    assert session.map_choices("fine", ("coam", "fine")) == ("coam", ("cam", "coam"))
    session.compare(*views, pair=session.compare_pair())
    session.stop_compare()
    session.set_lesion_centre(result.peaks_ras["coam"])
    evaluation = session.evaluate()
    row, summary = evaluation["row"], evaluation["summary"]
    assert row["COAM mm"] == pytest.approx(0.0, abs=1e-6) and np.isnan(row["fine mm"])
    assert summary["fine_n"] == 0 and "fine" not in evaluation_text(summary)
    assert evaluation_rows_text(session.evaluation_rows())[0]["fine mm"] == "–"
    session.close()


def test_a_calibrated_model_shows_the_calibrated_probability_and_its_line(case, analyzed, tmp_path):
    """A model file with a temperature: the session's result holds the calibrated probability (as the CLI
    reports it), the uncalibrated one and the model's operating line; an uncalibrated model shows the flag."""
    from BreastCMSLLib.network.calibration import Calibration, OperatingPoint, ScoreMetrics, operating_line
    from BreastCMSLLib.network.modelfile import load_model, save_model

    cal = Calibration(temperature=2.0, fitted=True, n_val=40, n_val_malignant=20,
                      before=ScoreMetrics(0.2, 0.4, 0.2, 0.9), after=ScoreMetrics(0.04, 0.1, 0.15, 0.45),
                      operating_point=OperatingPoint("sensitivity=0.9", 0.3, 0.9, (0.75, 1.0), 0.7, (0.5, 0.85)))
    loaded = load_model(case["model"])
    model = tmp_path / "calibrated.safetensors"
    save_model(model, loaded.model, loaded.config, loaded.provenance, cal)
    assert cli.main(["analyze", str(case["dir"]), "--model", str(model), "--out", str(tmp_path / "cli"),
                     "--device", "cpu"]) == 0
    expected = json.loads((tmp_path / "cli" / "result.json").read_text())
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, case["dir"])
    session = Session(scene, temp_dir=tmp_path)
    session.set_inputs(t1=t1, phases=series)
    result = session.analyze(model, device="cpu").wait(timeout=300)
    session.close()
    uncalibrated = analyzed["cold"]  # the same case and weights without a temperature
    assert result.calibrated and result.threshold == pytest.approx(0.3)
    assert result.probability_uncalibrated == pytest.approx(uncalibrated.probability, abs=1e-6)
    assert result.probability == pytest.approx(expected["probability"], abs=1e-6)
    z = np.log(uncalibrated.probability / (1 - uncalibrated.probability))  # the pre-sigmoid score
    assert result.probability == pytest.approx(1 / (1 + np.exp(-z / 2.0)), abs=1e-5)
    text = result_text(result)
    assert text["probability"] == f"{result.probability:.3f}"
    assert text["calibration"] == f"calibrated (uncalibrated {uncalibrated.probability:.3f})"
    assert text["operating_line"] == operating_line(cal) == (
        "at this model's threshold 0.3: sensitivity 0.90, specificity 0.70 on 40 validation cases")
    assert result.operating_point["n_validation"] == 40 and result.operating_point["specificity"] == 0.7
    flag = result_text(uncalibrated)
    assert flag["calibration"] == "uncalibrated" and flag["operating_line"].startswith("uncalibrated")
