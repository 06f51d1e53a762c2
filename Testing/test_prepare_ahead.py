"""Preparing ahead (``Session.prepare``, the worker's ``PREPARE``): an Analyze of prepared inputs neither exports,
reads nor preprocesses them again and gives the answers of a plain analysis bit for bit; inputs changed after
their preparation (even without a Modified event) are analyzed as they are now; a preparation followed by another
message is skipped, and its Analyze does everything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from BreastCMSLLib.panel.exchange import RESULT_ARRAYS, read_result, write_inputs
from BreastCMSLLib.panel.protocol import Kind, Message
from BreastCMSLLib.panel.session import Session
from BreastCMSLLib.panel.worker import serve
from BreastCMSLLib.pipeline.volumes import find_case_files
from BreastCMSLLib.run import AnalyzeRequest
from Testing.scenes import assert_result_equals_plain, case_nodes, plain_analysis


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A small phantom, an untrained small model and the plain analysis of the case folder."""
    return plain_analysis(tmp_path_factory.mktemp("ahead"), seed=5)


def recording_session(scene, tmp_path) -> tuple[Session, list[dict]]:
    """A session whose results' worker timings (result.json's) are recorded, in order."""
    session = Session(scene, temp_dir=tmp_path)
    timings, add_result = [], session.add_result

    def recorded(case, reference, out_dir):
        timings.append(json.loads((Path(out_dir) / "result.json").read_text())["timings"])
        return add_result(case, reference, out_dir)

    session.add_result = recorded
    return session, timings


def result_maps(scene, result) -> dict[str, np.ndarray]:
    return {name: slicer.util.arrayFromVolume(scene.GetNodeByID(
        result.nodes[name if name.endswith("_label") else f"{name}_volume"])).copy() for name in RESULT_ARRAYS}


def test_an_analyze_of_prepared_inputs_skips_reading_and_preprocessing_with_the_same_answers(plain, tmp_path):
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, plain["root"] / "case")
    session, timings = recording_session(scene, tmp_path)
    session.set_inputs(t1=t1, phases=series)
    try:
        assert session.prepare(plain["model"], device="cpu")
        assert not session.prepare(plain["model"], device="cpu")  # the same inputs, unchanged: nothing to send
        assert session.wait_prepared(timeout=300)
        exported = sorted(tmp_path.glob("BreastCMSL-*"))
        result = session.analyze(plain["model"], device="cpu").wait(timeout=300)
        assert sorted(tmp_path.glob("BreastCMSL-*")) in (exported, [])  # no second export (the folder may be gone)
    finally:
        session.close()
    assert timings[0]["read_s"] == 0.0 and timings[0]["preprocess_s"] == 0.0
    assert timings[0]["prepared_ahead_s"] > 0.0
    assert_result_equals_plain(scene, result, plain)


def test_inputs_changed_after_their_preparation_are_analyzed_as_they_are_now(plain, tmp_path):
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, plain["root"] / "case")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    session, timings = recording_session(scene, tmp_path / "a")
    session.set_inputs(t1=t1, phases=series)
    try:
        assert session.prepare(plain["model"], device="cpu") and session.wait_prepared(timeout=300)
        voxels = slicer.util.arrayFromVolume(series[2])
        voxels[:] = voxels[:, ::-1]  # written into the node's memory, with no Modified event
        changed = session.analyze(plain["model"], device="cpu").wait(timeout=300)
    finally:
        session.close()
    assert timings[0]["preprocess_s"] > 0.0 and "prepared_ahead_s" not in timings[0]
    fresh = Session(scene, temp_dir=tmp_path / "b")  # the changed scene, never prepared
    fresh.set_inputs(t1=t1, phases=series)
    try:
        expected = fresh.analyze(plain["model"], device="cpu").wait(timeout=300)
    finally:
        fresh.close()
    assert changed.probability == expected.probability != plain["summary"]["probability"]
    for name, array in result_maps(scene, changed).items():
        np.testing.assert_array_equal(array, result_maps(scene, expected)[name], name)


def test_a_preparation_followed_by_another_message_is_skipped_and_its_analyze_does_everything(plain, tmp_path):
    files = find_case_files(plain["root"] / "case")
    images = [sitk.ReadImage(str(path)) for path in [files.t1, *files.series]]
    volumes = write_inputs([(sitk.GetArrayViewFromImage(image), {"spacing": image.GetSpacing(),
                                                                 "origin": image.GetOrigin(),
                                                                 "direction": image.GetDirection()}, path.stem)
                            for image, path in zip(images, [files.t1, *files.series])], tmp_path / "inputs")
    request = AnalyzeRequest.for_volumes(volumes[0]["path"], [v["path"] for v in volumes[1:]], "phases",
                                         model=plain["model"], out=tmp_path / "out", device="cpu")
    lines = [Message(kind, request=request.to_dict(), volumes=volumes).line() for kind in (Kind.PREPARE,
                                                                                          Kind.ANALYZE)]
    sent: list[Message] = []
    serve(lambda timeout: lines.pop(0) if lines else "", sent.append, 60.0, pending=lambda: bool(lines))
    assert [m.kind for m in sent if m.kind is not Kind.PROGRESS] == [Kind.PREPARED, Kind.DONE]
    assert sent[0].text.startswith("skipped")
    result, maps = read_result(tmp_path / "out")
    assert result["timings"]["preprocess_s"] > 0.0 and "prepared_ahead_s" not in result["timings"]
    assert result["probability"] == plain["summary"]["probability"]
    for name, image in maps.items():
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image),
                                      sitk.GetArrayViewFromImage(plain["maps"][name]), name)
