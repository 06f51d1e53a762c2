"""The session's Kinetics section (issue 28) on slicer-core MRML: the curve at a clicked point (RAS) and in Slicer plot
nodes, its words, the SER overlay in its colour table, and the FTV of a markups ROI, against the Lib's own values."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.mrml.kinetics import SER_COLOR_NAME
from BreastCMSLLib.panel.kinetics import legend
from BreastCMSLLib.panel.session import Session
from BreastCMSLLib.panel.text import evaluation_rows_text
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case, write_case
from BreastCMSLLib.pipeline.kinetics import SER_COLOURS, KineticsConfig, box_region, enhancement_maps, functional_volume

from .conftest import TINY_SHAPE
from .test_session import slice_views


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    phantom = make_case(6, PhantomConfig(shape=TINY_SHAPE, label=1))
    folder = tmp_path_factory.mktemp("kinpanel") / "case"
    write_case(phantom, folder)
    scene = slicer.vtkMRMLScene()
    session = Session(scene, temp_dir=tmp_path_factory.mktemp("kinpanel_tmp"))
    session.load_case_folder(folder)
    yield phantom, session, session.kinetics()  # the case folder's times.json gives the phase times
    session.close()


def arrays(phantom, *names):
    return [sitk.GetArrayFromImage(phantom.images[n]).astype(np.float32) for n in names]


def test_curve_at_a_clicked_point_and_its_chart(loaded):
    phantom, _, section = loaded
    lps = phantom.truth["center_lps"]
    ras = [-lps[0], -lps[1], lps[2]]
    curve = section.curve_at_ras(ras, "lesion")
    i, j, k = phantom.images["pre"].TransformPhysicalPointToIndex(lps)
    pre, *posts = (a[k, j, i] for a in arrays(phantom, "pre", *(f"post_{n}" for n in range(1, 7))))
    np.testing.assert_allclose(curve["curve_percent"], [100 * (p - pre) / pre for p in posts], atol=0.01)
    assert curve["delayed"] == "washout" and curve["words"].startswith("fast initial rise")
    assert "washout" in curve["words"]
    chart = section.chart
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 1
    table = chart.GetNthPlotSeriesNode(0).GetTableNode().GetTable()
    assert [table.GetValue(r, 0).ToDouble() for r in range(6)] == [75, 150, 225, 300, 375, 450]
    np.testing.assert_allclose([table.GetValue(r, 1).ToDouble() for r in range(6)], curve["curve_percent"])
    section.curve_at_ras([ras[0] + 1, ras[1], ras[2]], "next to it")
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    with pytest.raises(InputError, match="outside the volume"):
        section.curve_at_ras([900.0, 0.0, 0.0])


def test_ftv_of_a_markups_roi_and_the_ser_overlay(loaded):
    phantom, session, section = loaded
    lps = np.asarray(phantom.truth["center_lps"])
    roi = session.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lesion box")
    roi.SetCenter(-lps[0], -lps[1], lps[2])
    roi.SetSize(30.0, 30.0, 30.0)
    ftv = section.ftv_in_roi(roi)
    # the Lib's own FTV of the same LPS box
    pre, early, late = arrays(phantom, "pre", "post_2", "post_6")
    grid = phantom.images["post_1"]
    region = box_region(grid, lps - 15, lps + 15, "box")
    cfg = KineticsConfig()
    maps = enhancement_maps(pre, early, late, cfg, region)
    expected = functional_volume(pre, maps.pe, maps.ser, region, float(np.prod(grid.GetSpacing())) / 1000, cfg, "b")
    assert ftv["ftv_ml"] == pytest.approx(expected.ftv_ml) and ftv["ftv_ml"] > 1.0
    assert ftv["ser_volumes_ml"] == pytest.approx(expected.ser_volumes_ml)
    views = slice_views(session.scene)
    node = section.show(views, "ser_label")
    composite = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(views[0])
    assert composite.GetLabelVolumeID() == node.GetID()
    colours = node.GetDisplayNode().GetColorNode()
    assert colours.GetName() == SER_COLOR_NAME
    rgba = [0.0] * 4
    colours.GetColor(3, rgba)
    assert rgba[:3] == pytest.approx(SER_COLOURS[3], abs=1 / 255)  # stored in 8 bits
    assert [entry["name"] for entry in legend()] == ["persistent", "plateau", "washout"]
    pe = section.show(views, "pe_early")
    assert composite.GetForegroundVolumeID() == pe.GetID()
    far = session.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far box")
    far.SetCenter(900.0, 900.0, 900.0)
    far.SetSize(10.0, 10.0, 10.0)
    with pytest.raises(InputError, match=r"far box: the box .* outside the volume"):
        section.ftv_in_roi(far)


def classes_by_hand(pre: float, early: float, late: float) -> tuple[str, str]:
    """BI-RADS classes from three signals: initial from the early enhancement (50 %, 100 %), delayed from the late
    signal against the early one (±10 %)."""
    rise = 100 * (early - pre) / pre
    change = 100 * (late - early) / early
    return ("slow" if rise < 50 else "fast" if rise > 100 else "medium",
            "persistent" if change > 10 else "washout" if change < -10 else "plateau")


def test_the_sessions_kinetics_at_the_fine_peak_and_in_the_evaluation_csv(loaded, tiny_model_path, tmp_path):
    """The session owns the section (one per inputs, the case folder's times), the curve at the fine peak equals
    the voxels there, and an evaluation row carries the classes and PE at the centre and the ROI's FTV."""
    phantom, session, _ = loaded
    section = session.kinetics()
    assert section is session.kinetics() and list(section.kin.times.post_s) == [75, 150, 225, 300, 375, 450]
    session.analyze(tiny_model_path, device="cpu").wait(timeout=300)
    assert session.kinetics() is section  # same inputs: same section
    peak_ras = np.asarray(session.result.peaks_ras["fine"])
    curve = section.curve_at_peak("fine")
    lps = peak_ras * [-1, -1, 1]
    i, j, k = phantom.images["pre"].TransformPhysicalPointToIndex(lps.tolist())
    pre, *posts = (a[k, j, i] for a in arrays(phantom, "pre", *(f"post_{n}" for n in range(1, 7))))
    np.testing.assert_allclose(curve["curve_percent"], [100 * (p - pre) / pre for p in posts], atol=0.01)
    assert (curve["initial"], curve["delayed"]) == classes_by_hand(pre, posts[1], posts[5])
    assert section.chart.GetNthPlotSeriesNode(section.chart.GetNumberOfPlotSeriesNodes() - 1).GetName() == "fine peak"
    roi = session.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "lesion box")
    centre = np.asarray(phantom.truth["center_lps"]) * [-1, -1, 1]
    roi.SetCenter(*centre)
    roi.SetSize(30.0, 30.0, 30.0)
    ftv = section.ftv_in_roi(roi)
    session.set_lesion_centre(peak_ras)
    row = session.evaluate()["row"]
    assert (row["initial rise"], row["delayed phase"]) == (curve["initial"], curve["delayed"])
    path = session.save_table_csv(tmp_path / "evaluation.csv")
    with open(path, newline="") as f:
        saved = list(csv.DictReader(f))[-1]
    assert (saved["initial rise"], saved["delayed phase"]) == classes_by_hand(pre, posts[1], posts[5])
    assert float(saved["PE %"]) == pytest.approx(100 * (posts[1] - pre) / pre, abs=0.01)
    assert float(saved["FTV mL"]) == pytest.approx(ftv["ftv_ml"], rel=1e-5) and ftv["ftv_ml"] > 1.0
    shown = evaluation_rows_text(session.evaluation_rows())[-1]  # what the faces' tables show
    assert (shown["delayed phase"], shown["FTV mL"]) == (curve["delayed"], f"{ftv['ftv_ml']:.2f}")
