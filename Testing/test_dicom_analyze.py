"""``breastcmsl analyze --dicom`` equals ``analyze`` on the case folder; ``--dicom-seg`` reads back in highdicom."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.cli import main
from BreastCMSLLib.dicom.series import read_dataset, scan_study, volume_to_image
from BreastCMSLLib.pipeline.preprocess import load_case
from Testing import dicomsynth

MAPS = ("coam", "cam", "fine", "coam_label", "cam_label", "fine_label")
SEG_MAP = {"siemens": "coam", "ge": "fine", "philips": "cam"}  # --seg-map exercised once per map


@pytest.fixture(scope="module")
def case_result(tiny_case, tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "case"
    assert main(["analyze", str(tiny_case), "--model", str(tiny_model_path), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def studies(tiny_case, tmp_path_factory):
    """The tiny phantom case written as DICOM studies: Siemens (per-phase series + scanner subtractions),
    GE (one multi-phase series) and Philips (subtractions only, gzip, enhanced T1)."""
    inputs = load_case(tiny_case)
    root = tmp_path_factory.mktemp("dicom")
    for style in ("siemens", "ge", "philips"):
        dicomsynth.write_study(root / style, style, inputs.t1, inputs.series[0], inputs.series[1:])
    return root


def _image(path):
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("style", ["siemens", "ge", "philips"])
def test_analyze_dicom_equals_case_folder(style, studies, case_result, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    seg_map = SEG_MAP[style]
    code = main(["analyze", "--dicom", str(studies / style), "--model", str(tiny_model_path), "--out", str(out),
                 "--dicom-seg", "--seg-map", seg_map])
    capsys.readouterr()
    assert code == 0
    mine, theirs = (json.loads((d / "result.json").read_text()) for d in (out, case_result))
    assert abs(mine["probability"] - theirs["probability"]) <= 1e-4
    assert mine["cos_theta"] == pytest.approx(theirs["cos_theta"], abs=1e-5)
    for peak in ("coam_peak_lps", "cam_peak_lps", "fine_peak_lps"):
        np.testing.assert_allclose(mine[peak], theirs[peak], atol=1e-4)
    for name in MAPS:
        a, b = _image(out / f"{name}.nrrd"), _image(case_result / f"{name}.nrrd")
        assert a.GetSize() == b.GetSize()
        np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b), atol=1e-4)

    # result.json names the series that filled each role
    series = {s.number: s for s in scan_study(studies / style)}
    roles = mine["inputs"]["dicom"]["roles"]
    reference = roles[2] if mine["inputs"]["kind"] == "phases" else roles[1]
    assert reference["role"] in ("post_1", "sub_1")
    assert reference["series_uid"] == series[reference["series_number"]].uid
    assert all(r["description"] == series[r["series_number"]].description for r in roles)

    # the DICOM SEG: highdicom reads it back, it references the reference series, and it is the labelmap
    assert sorted(p.name for p in out.glob("*_seg.dcm")) == [f"{seg_map}_seg.dcm"]
    seg = hd.seg.segread(out / f"{seg_map}_seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == reference["series_uid"]
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    ref_series = series[reference["series_number"]]
    phase = ref_series.phases[reference["phase"] - 1]
    assert referenced == {str(read_dataset(f.path, stop_before_pixels=True).SOPInstanceUID) for f in phase.frames}
    assert seg.get_segment_description(1).segment_label == {"coam": "COAM", "cam": "CAM",
                                                            "fine": "fine map"}[seg_map] + " attention"
    label = _image(out / f"{seg_map}_label.nrrd")
    back = volume_to_image(seg.get_volume(combine_segments=True))
    np.testing.assert_allclose(back.GetOrigin(), label.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), label.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(label))


def test_analyze_dicom_ambiguous_study_leaves_nothing(studies, tiny_case, tiny_model_path, tmp_path, capsys):
    inputs = load_case(tiny_case)
    study = tmp_path / "study"
    repeat = dicomsynth.SeriesSpec("ax dyn pre", [inputs.series[0]], [20.0])
    dicomsynth.write_study(study, "duke", inputs.t1, inputs.series[0], inputs.series[1:], extra=[repeat])
    out = tmp_path / "out"
    code = main(["analyze", "--dicom", str(study), "--model", str(tiny_model_path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(study) in err and "series 200 'ax dyn pre'" in err and "series 900 'ax dyn pre'" in err
    assert not out.exists()
    code = main(["analyze", str(tiny_case), "--model", str(tiny_model_path), "--out", str(out), "--dicom-seg"])
    assert code == 2 and "--dicom-seg need --dicom" in capsys.readouterr().err
    assert not out.exists()
    code = main(["analyze", str(tiny_case), "--model", str(tiny_model_path), "--out", str(out), "--seg-map", "fine"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--seg-map" in err and "--dicom-seg" in err
    assert not out.exists()
