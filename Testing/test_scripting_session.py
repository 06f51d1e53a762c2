"""The scripting guide's session, run as written on the slicer-core wheel.

The session (docs/scripting.md, "A whole session, as a test runs it") loads an oblique phantom case into
volume nodes, analyzes it in the session's worker (twice, then once more prepared ahead), places a centre point and
evaluates; here its output nodes' IJK-to-RAS matrices must equal the reference node's to 1e-6, the warm runs must
equal the cold one, and the table row must equal a hand computation.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import vtk

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "scripting.md"


def session_code() -> str:
    text = GUIDE.read_text()
    section = text.split("## A whole session, as a test runs it", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp("session")
    namespace = {"__name__": "readme_session"}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        exec(compile(session_code(), str(GUIDE), "exec"), namespace)
    namespace["folder"] = folder
    return namespace


def test_session_output_nodes_have_the_reference_geometry(session):
    scene, result, reference = session["scene"], session["result"], session["phases"][1]
    expected = ijk_to_ras(reference)
    # the case really is oblique: the direction has off-axis terms of sin(15 deg) x spacing
    assert abs(expected[0, 1]) == pytest.approx(3.5 * np.sin(np.radians(15)), abs=1e-6)
    for key in ("coam_volume", "cam_volume", "coam_label", "cam_label"):
        node = scene.GetNodeByID(result.nodes[key])
        np.testing.assert_allclose(ijk_to_ras(node), expected, atol=1e-6)
        assert node.GetImageData().GetDimensions() == reference.GetImageData().GetDimensions() == (96, 64, 40)


def test_session_table_row_matches_a_hand_computation(session):
    scene, result, evaluation = session["scene"], session["result"], session["evaluation"]
    centre = np.zeros(3)
    session["centre"].GetNthControlPointPositionWorld(0, centre)
    peaks = scene.GetNodeByID(result.nodes["peaks"])
    hand = {}
    for index, column in enumerate(("COAM mm", "CAM mm")):
        peak = np.zeros(3)
        peaks.GetNthControlPointPosition(index, peak)
        hand[column] = float(np.sqrt(((centre - peak) ** 2).sum()))
    table = scene.GetNodeByID(evaluation["table_id"])
    assert table.GetNumberOfRows() == 1 and session["centre"].GetNumberOfControlPoints() == 1
    for column, value in hand.items():
        assert table.GetTable().GetValueByName(0, column).ToDouble() == pytest.approx(value, abs=1e-9)
        assert evaluation["row"][column] == pytest.approx(value, abs=1e-9)
    assert table.GetTable().GetValueByName(0, "case").ToString() == "case post_1"
    assert evaluation["summary"]["coam_mean_mm"] == pytest.approx(hand["COAM mm"])
    assert evaluation["summary"]["coam_std_mm"] == 0.0
    with open(session["folder"] / "breastcmsl-session" / "evaluation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["CAM mm"]) == pytest.approx(hand["CAM mm"], rel=1e-5)  # the CSV keeps 6 digits


def test_session_second_run_reused_the_worker_and_equals_the_first(session):
    result, again = session["result"], session["again"]
    assert session["session"].job is not session["job"]
    assert session["session"].job.worker_pid == session["job"].worker_pid  # the warm worker did the second run
    assert session["job"].worker.process.poll() is not None  # session.close() stopped it
    for key in ("probability", "cos_theta"):
        assert getattr(again, key) == pytest.approx(getattr(result, key), abs=1e-6)
    for name in ("coam", "cam"):
        np.testing.assert_allclose(again.peaks_ras[name], result.peaks_ras[name], atol=1e-6)
    assert again.nodes["coam_volume"] != result.nodes["coam_volume"]  # a second set of nodes


def test_session_prepared_ahead_run_equals_the_first(session):
    result, ahead = session["result"], session["ahead"]
    assert (ahead.probability, ahead.cos_theta, ahead.prediction) == (result.probability, result.cos_theta,
                                                                       result.prediction)
    assert ahead.peaks_ras == result.peaks_ras
