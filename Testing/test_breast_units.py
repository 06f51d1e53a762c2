"""Per-breast units in preprocessing (PreprocessConfig.unit "breast"): one breast cut at the midline, a left
breast mirrored onto a right one's orientation, maps carried back onto the study unmirrored."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case
from BreastCMSLLib.pipeline.preprocess import CaseInputs, preprocess_case, to_ijk, to_reference

SHAPE = (96, 64, 40)  # the default field of view at ~3.7 mm
CFG = PreprocessConfig(input_size=(48, 48, 32), unit="breast")
POSTS = 3


def _inputs(images: dict, breast: str | None) -> CaseInputs:
    series = [images["pre"], *(images[f"post_{k}"] for k in range(1, POSTS + 1))]
    return CaseInputs(images["t1"], series, "phases", ["t1", "pre", *(f"post_{k}" for k in range(1, POSTS + 1))],
                      None if breast is None else {"breast": breast})


def _mirror(image: sitk.Image) -> sitk.Image:
    """The physical mirror image about the plane x = 0 (the phantom's grid is centred on it)."""
    out = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :, ::-1].copy())
    out.CopyInformation(image)
    return out


@pytest.fixture(scope="module")
def case():
    return make_case(7, PhantomConfig(shape=SHAPE, label=1)).images


def test_left_breast_is_the_mirror_of_a_right_one(case):
    """The left unit of the mirrored study is the right unit of the study itself, voxel for voxel (the breast
    mask, made slice by slice of the mirrored images, differs in a handful of voxels at its border)."""
    right = preprocess_case(_inputs(case, "right"), CFG)
    left = preprocess_case(_inputs({k: _mirror(v) for k, v in case.items()}, "left"), CFG)
    assert np.array(left.input_grid.GetDirection())[0] == -1.0 and right.input_grid.GetDirection()[0] == 1.0
    assert np.allclose(left.input_grid.GetOrigin(), np.multiply(right.input_grid.GetOrigin(), (-1, 1, 1)))
    mask_left, mask_right = to_ijk(left.input_grid) > 0, to_ijk(right.input_grid) > 0
    assert (mask_left != mask_right).sum() <= 1e-3 * mask_right.sum()
    both = mask_left & mask_right
    np.testing.assert_allclose(left.array[:, both], right.array[:, both], atol=1e-5)


def test_each_unit_holds_one_breast_and_maps_land_on_its_side(case):
    whole = preprocess_case(_inputs(case, None), PreprocessConfig(input_size=(96, 48, 32)))
    for breast, sign in (("left", 1.0), ("right", -1.0)):
        prep = preprocess_case(_inputs(case, breast), CFG)
        ijk = np.argwhere(to_ijk(prep.input_grid) > 0)
        x = np.array([prep.input_grid.TransformIndexToPhysicalPoint(tuple(int(v) for v in p))[0] for p in ijk])
        assert np.all(sign * x > -4.0), breast  # the phantom's midline is x = 0; the cut found within a voxel
        # a map over the unit's breast lands, unmirrored, on that breast of the study's grid
        back = sitk.GetArrayFromImage(to_reference(to_ijk(prep.input_grid).astype(np.float32), prep))  # (k, j, i)
        columns = np.flatnonzero(back.max(axis=(0, 1)) > 0.5)
        centres = np.array([prep.reference.TransformIndexToPhysicalPoint((int(c), 0, 0))[0] for c in columns])
        assert np.all(sign * centres > -4.0) and np.ptp(centres) > 100.0, breast
    assert whole.array.shape[1] == 96


def test_a_per_breast_model_needs_the_breast(case):
    with pytest.raises(InputError, match="per-breast model needs the breast"):
        preprocess_case(_inputs(case, None), CFG)
    with pytest.raises(ValueError, match="unit must be whole or breast"):
        PreprocessConfig(unit="both")


def test_per_breast_model_reports_each_breast_and_maps_the_whole_study(case, tmp_path):
    import torch

    from BreastCMSLLib.config import ModelConfig
    from BreastCMSLLib.network.modelfile import load_model, save_model
    from BreastCMSLLib.network.net import build_model
    from BreastCMSLLib.panel.state import AnalysisResult
    from BreastCMSLLib.panel.text import result_text
    from BreastCMSLLib.pipeline.analyze import analyze_case
    from BreastCMSLLib.pipeline.output import write_analysis

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=POSTS, width_factor=0.125, preprocess=CFG)
    save_model(tmp_path / "breast.safetensors", build_model(cfg), cfg, {"name": "per-breast", "untrained": True})
    loaded = load_model(tmp_path / "breast.safetensors")
    a = analyze_case(_inputs(case, None), loaded, device="cpu")
    assert set(a.breasts) == {"left", "right"}
    assert a.probability == max(b["probability"] for b in a.breasts.values())
    assert a.breasts["left"]["coam_peak_lps"][0] > -4.0 and a.breasts["right"]["coam_peak_lps"][0] < 4.0
    # the study's map is each breast's own map on its side (the left one analyzed as a unit of its own)
    left = analyze_case(_inputs(case, "left"), loaded, device="cpu")
    assert left.breasts is None and left.probability == pytest.approx(a.breasts["left"]["probability"], abs=1e-6)
    study, alone = sitk.GetArrayFromImage(a.coam), sitk.GetArrayFromImage(left.coam)
    x = np.array([a.coam.TransformIndexToPhysicalPoint((i, 0, 0))[0] for i in range(a.coam.GetSize()[0])])
    np.testing.assert_allclose(study[:, :, x > 10.0], alone[:, :, x > 10.0], atol=1e-6)
    assert a.coam.GetSize() == case["post_1"].GetSize()  # maps on the whole study's reference grid
    result = write_analysis(a, tmp_path / "out", {})
    shown = result_text(AnalysisResult.from_output("case", result, {}))
    b = a.breasts
    assert shown["probability"] == f"left {b['left']['probability']:.3f}, right {b['right']['probability']:.3f}"
    assert shown["prediction"].startswith(f"left {b['left']['prediction']}, right {b['right']['prediction']} (")


def test_analyze_of_a_study_with_a_per_breast_model_gives_analyze_case_bit_for_bit(tmp_path):
    """``breastcmsl analyze``'s path (run.py: both breasts preprocessed from the model file's header while the model
    loads) gives the answers of analyze_case run in turn: probabilities, each breast's record, maps and labelmaps."""
    import json

    import torch

    from BreastCMSLLib.config import ModelConfig
    from BreastCMSLLib.network.modelfile import load_model, save_model
    from BreastCMSLLib.network.net import build_model
    from BreastCMSLLib.phantom.synth import write_case
    from BreastCMSLLib.pipeline.analyze import analyze_case
    from BreastCMSLLib.pipeline.output import result_dict
    from BreastCMSLLib.pipeline.preprocess import load_case
    from BreastCMSLLib.run import AnalyzeRequest, run_analysis

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=6, width_factor=0.125, preprocess=CFG)
    model = tmp_path / "breast.safetensors"
    save_model(model, build_model(cfg), cfg, {"name": "per-breast", "untrained": True})
    write_case(make_case(7, PhantomConfig(shape=SHAPE, label=1)), tmp_path / "case")
    run_analysis(AnalyzeRequest(model=model, out=tmp_path / "out", case_dir=tmp_path / "case", device="cpu"))
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    a = analyze_case(load_case(tmp_path / "case"), load_model(model), device="cpu")
    expected = json.loads(json.dumps(result_dict(a, written["inputs"])))
    assert set(written["breasts"]) == {"left", "right"}
    for key in ("probability", "cos_theta", "prediction", "breasts", "coam_peak_lps", "cam_peak_lps", "fine_peak_lps",
                "applicability"):
        assert written[key] == expected[key], key
    for name in ("coam", "cam", "fine", "coam_label", "cam_label", "fine_label"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{name}.nrrd"))),
                                      sitk.GetArrayViewFromImage(getattr(a, name)), name)
