"""The warm worker's path (BreastCMSLLib.panel.exchange: inputs and maps as memory-mapped arrays, no image files)
gives the answers of the plain ``run_analysis`` on the case's files: the same probabilities, maps, labelmaps and
peaks, bit for bit, in this process; through a session on a real MRML scene the same probabilities, maps and
labelmaps bit for bit, and the peaks to float rounding (the geometry goes through the scene's RAS matrices and
back: a last-bit change of a coordinate)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.panel.exchange import RESULT_ARRAYS, case_inputs, read_result, write_inputs, write_result
from BreastCMSLLib.panel.session import Session
from BreastCMSLLib.pipeline.volumes import find_case_files
from BreastCMSLLib.run import AnalyzeRequest, run_analysis
from Testing.scenes import assert_result_equals_plain, case_nodes, plain_analysis

NUMBERS = ("probability", "probability_uncalibrated", "cos_theta", "prediction", "threshold",
           *(f"{name}_peak_lps" for name in MAP_NAMES))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A small phantom, an untrained small model and the plain analysis of the case folder (NRRD files out)."""
    return plain_analysis(tmp_path_factory.mktemp("exchange"), seed=3)


def assert_same_maps(maps: dict, expected: dict) -> None:
    assert set(maps) == set(expected) == set(RESULT_ARRAYS)
    for name, image in maps.items():
        reference = expected[name]
        assert image.GetPixelID() == reference.GetPixelID(), name
        assert image.GetSize() == reference.GetSize() and image.GetOrigin() == reference.GetOrigin()
        assert image.GetSpacing() == reference.GetSpacing() and image.GetDirection() == reference.GetDirection()
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference), name)


def test_preprocessing_while_the_model_loads_gives_the_analysis_in_turn_bit_for_bit(plain):
    """run_analysis preprocesses from the model file's header while torch is imported and the model loaded and
    folded (run.py); the same case analyzed in turn, the model loaded first, gives the same answers bit for bit."""
    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.analyze import analyze_case
    from BreastCMSLLib.pipeline.preprocess import load_case

    analysis = analyze_case(load_case(plain["root"] / "case"), load_model(plain["model"]), device="cpu")
    assert set(analysis.timings) >= {"preprocess_s", "inference_s", "maps_s"}
    for key in NUMBERS:
        value = getattr(analysis, key)
        assert (list(value) if key.endswith("_lps") else value) == plain["summary"][key], key
    assert_same_maps({name: getattr(analysis, name) for name in RESULT_ARRAYS}, plain["maps"])


def test_arrays_in_and_out_give_the_plain_analysis_bit_for_bit(plain, tmp_path):
    files = find_case_files(plain["root"] / "case")
    images = [sitk.ReadImage(str(path)) for path in [files.t1, *files.series]]  # the voxel type as stored
    volumes = write_inputs([(sitk.GetArrayViewFromImage(image),
                             {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                              "direction": image.GetDirection()}, path.stem)
                            for image, path in zip(images, [files.t1, *files.series])], tmp_path / "inputs")
    stored = np.load(volumes[1]["path"])
    assert stored.dtype == sitk.GetArrayViewFromImage(images[1]).dtype == np.int16
    np.testing.assert_array_equal(stored, sitk.GetArrayViewFromImage(images[1]))
    inputs, _ = case_inputs(volumes, "phases")  # int16 kept in the worker: preprocessing converts as it copies
    assert [image.GetPixelID() for image in inputs.series] == [sitk.sitkInt16] * len(inputs.series)
    request = AnalyzeRequest.for_volumes(volumes[0]["path"], [v["path"] for v in volumes[1:]], "phases",
                                         model=plain["model"], out=tmp_path / "out", device="cpu")
    summary = run_analysis(request, given=functools.partial(case_inputs, volumes, "phases"), write=write_result)
    assert {k: summary[k] for k in NUMBERS} == {k: plain["summary"][k] for k in NUMBERS}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["result.json",
                                                                          *(f"{n}.npy" for n in RESULT_ARRAYS)])
    result, maps = read_result(tmp_path / "out")
    assert result["inputs"] == {"kind": "phases", "t1": "t1", "series": ["pre", *(f"post_{k}" for k in range(1, 7))]}
    assert_same_maps(maps, plain["maps"])


def test_a_warm_analyze_through_the_session_equals_the_plain_analysis(plain, tmp_path):
    scene = slicer.vtkMRMLScene()
    t1, series = case_nodes(scene, plain["root"] / "case")
    session = Session(scene, temp_dir=tmp_path)
    folders = []

    def listed(case, reference, out_dir):  # what the worker handed over, before the job's folder goes
        folders.append(sorted(p.name for p in out_dir.iterdir()))
        return add_result(case, reference, out_dir)

    add_result, session.add_result = session.add_result, listed
    session.set_inputs(t1=t1, phases=series)
    try:
        for _ in range(2):  # cold, then warm in the same worker
            result = session.analyze(plain["model"], device="cpu").wait(timeout=300)
            assert_result_equals_plain(scene, result, plain)
    finally:
        session.close()
    assert folders == [sorted(["result.json", *(f"{n}.npy" for n in RESULT_ARRAYS)])] * 2  # no image files


def test_result_nodes_keep_their_voxels_once_the_images_are_gone(plain):
    """The nodes hold the images' own memory (no copy, mrml/nodes.py): it lives as long as the nodes do."""
    import gc

    from BreastCMSLLib.mrml.nodes import add_result_nodes

    scene = slicer.vtkMRMLScene()
    images = {name: sitk.Image(image) for name, image in plain["maps"].items()}  # copies of their own
    peaks = {name: plain["summary"][f"{name}_peak_lps"] for name in MAP_NAMES}
    ids = add_result_nodes(scene, "case", images, peaks)
    del images
    gc.collect()
    reused = [np.full(image.GetNumberOfPixels(), 7, np.float32) for image in plain["maps"].values()]  # freed memory
    for name in RESULT_ARRAYS:
        node = scene.GetNodeByID(ids[name if name.endswith("_label") else f"{name}_volume"])
        expected = sitk.GetArrayViewFromImage(plain["maps"][name])
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), expected)
    assert all(array[0] == 7 for array in reused)
