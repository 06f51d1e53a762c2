"""``analyze --kinetics`` (issue 28): the PE/SER maps beside the analysis maps, the curve at every map's peak in
result.json, and a note (not a failure) where a case has no kinetics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.cli import main
from BreastCMSLLib.phantom.synth import synth_case
from BreastCMSLLib.run import AnalyzeRequest, run_analysis

from .conftest import TINY_SHAPE, TINY_SPACING


def test_analyze_with_kinetics(tiny_case, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", str(tiny_case), "--model", str(tiny_model_path), "--out", str(out), "--device", "cpu",
                 "--kinetics"]) == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    kin = result["kinetics"]
    assert kin["available"] and kin["early_phase"]["post"] == 2 and kin["late_phase"]["post"] == 6
    pe = sitk.ReadImage(str(out / "pe_early.nrrd"))
    coam = sitk.ReadImage(str(out / "coam.nrrd"))
    assert pe.GetSize() == coam.GetSize() and pe.GetOrigin() == coam.GetOrigin()  # the reference grid
    pre = sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_case / "pre.nrrd"))).astype(float)
    posts = [sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_case / f"post_{k}.nrrd"))).astype(float)
             for k in range(1, 7)]
    for name in ("coam", "cam", "fine"):
        peak = result[f"{name}_peak_lps"]
        curve = kin["peak_curves"][name]
        assert curve["lps"] == pytest.approx(peak, abs=1e-3)
        # radius 2 mm is below the 3.6 mm voxels: the curve is the nearest voxel's
        i, j, k = pe.TransformPhysicalPointToIndex(peak)
        if pre[k, j, i] > 0:
            expected = [100 * (p[k, j, i] - pre[k, j, i]) / pre[k, j, i] for p in posts]
            np.testing.assert_allclose(curve["curve_percent"], expected, atol=0.01)
    # a later analysis without --kinetics leaves no stale kinetics maps
    run_analysis(AnalyzeRequest(model=tiny_model_path, out=out, case_dir=tiny_case, device="cpu"))
    assert not (out / "pe_early.nrrd").exists() and "kinetics" not in json.loads((out / "result.json").read_text())


def test_subtractions_get_a_note_not_a_failure(tiny_model_path, tmp_path):
    case = tmp_path / "subs"
    synth_case(case, seed=7, label=1, shape=TINY_SHAPE, spacing=TINY_SPACING, inputs="subtractions")
    out = tmp_path / "out"
    run_analysis(AnalyzeRequest(model=tiny_model_path, out=out, case_dir=case, device="cpu", kinetics=True))
    kin = json.loads((out / "result.json").read_text())["kinetics"]
    assert kin["available"] is False and "subtractions only" in kin["note"]
    assert not (out / "pe_early.nrrd").exists() and (out / "coam.nrrd").exists()
