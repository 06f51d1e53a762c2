"""The slice-wise Frangi breast mask against the phantom's truth (acceptance 4)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import f1_score

from BreastCMSLLib.config import MaskConfig
from BreastCMSLLib.phantom.anatomy import TISSUE_LABELS
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case
from BreastCMSLLib.pipeline.mask import breast_mask, slice_objectness

CASES = {
    "tiny-0": PhantomConfig(shape=(96, 64, 40)),
    "tiny-1": PhantomConfig(shape=(96, 64, 40)),
    "tiny-2": PhantomConfig(shape=(96, 64, 40), label=1),
    "tiny-3": PhantomConfig(shape=(96, 64, 40), label=0),
    "moderate-4": PhantomConfig(shape=(240, 150, 60), spacing=(1.5, 1.55, 2.4), origin=(-170.0, -90.0, 33.0)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case_and_mask(request):
    name = request.param
    case = make_case(int(name.split("-")[1]), CASES[name])
    t1 = sitk.Cast(case.images["t1"], sitk.sitkFloat32)
    return name, case, breast_mask(t1)


def dice(a: sitk.Image, b: sitk.Image) -> float:
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(a, b)
    return overlap.GetDiceCoefficient()


def test_dice_against_truth_and_no_heart(case_and_mask):
    name, case, mask = case_and_mask
    value = dice(mask, case.breast_mask)
    m, truth = sitk.GetArrayFromImage(mask).astype(bool), sitk.GetArrayFromImage(case.breast_mask).astype(bool)
    assert value == pytest.approx(f1_score(truth.ravel(), m.ravel()))  # Dice is the F1 score of the voxels
    assert value >= 0.9, (name, value)
    tissue = sitk.GetArrayFromImage(case.tissue)
    assert not np.any(m & (tissue == TISSUE_LABELS["heart"])), name
    assert not np.any(m & (tissue == TISSUE_LABELS["lung"])), name
    lesion = sitk.GetArrayFromImage(case.lesion_mask).astype(bool)
    assert m[lesion].mean() > 0.95, name  # the lesion survives masking


def test_mask_is_binary_on_the_t1_grid(case_and_mask):
    _, case, mask = case_and_mask
    t1 = case.images["t1"]
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == t1.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), t1.GetOrigin())
    np.testing.assert_allclose(mask.GetSpacing(), t1.GetSpacing())
    np.testing.assert_allclose(mask.GetDirection(), t1.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(mask)).tolist()) == {0, 1}


def test_intensity_scale_does_not_matter():
    """The thresholds are relative to the volume's fat level: a rescaled T1 gives the same mask."""
    case = make_case(5, PhantomConfig(shape=(96, 64, 40)))
    t1 = sitk.Cast(case.images["t1"], sitk.sitkFloat32)
    a = sitk.GetArrayFromImage(breast_mask(t1))
    b = sitk.GetArrayFromImage(breast_mask(t1 * 7.5))
    assert np.mean(a != b) < 1e-3


def test_config_parameters_act():
    """The posterior limit follows offset_mm: a more anterior limit gives a smaller mask."""
    case = make_case(1, PhantomConfig(shape=(96, 64, 40)))
    t1 = sitk.Cast(case.images["t1"], sitk.sitkFloat32)
    base = sitk.GetArrayFromImage(breast_mask(t1)).sum()
    shifted = sitk.GetArrayFromImage(breast_mask(t1, MaskConfig(offset_mm=-10.0))).sum()
    assert shifted < 0.9 * base


def test_oblique_acquisition():
    """A grid rotated 15 degrees about z, brought to the nearest axial orientation (as preprocessing does):
    the chest wall is tilted in-plane, the mask still follows it."""
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    case = make_case(0, PhantomConfig(shape=(96, 64, 40), direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)))
    t1 = sitk.DICOMOrient(sitk.Cast(case.images["t1"], sitk.sitkFloat32), "LPS")
    mask = breast_mask(t1)
    np.testing.assert_allclose(mask.GetDirection(), t1.GetDirection())
    assert dice(mask, sitk.DICOMOrient(case.breast_mask, "LPS")) >= 0.9
    heart = sitk.GetArrayFromImage(sitk.DICOMOrient(case.tissue, "LPS")) == TISSUE_LABELS["heart"]
    assert not np.any(heart & (sitk.GetArrayFromImage(mask) > 0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_fat_suppressed_fallback_against_truth(name):
    """Without a T1 the mask comes from the fat-suppressed pre-contrast phase (bright chest-wall band):
    Dice against the phantom's truth at least 0.85, the lesion kept, and no lung."""
    case = make_case(int(name.split("-")[1]), CASES[name])
    mask = breast_mask(sitk.Cast(case.images["pre"], sitk.sitkFloat32), fat_suppressed=True)
    value = dice(mask, case.breast_mask)
    print(f"{name}: fat-suppressed fallback Dice {value:.3f}")
    assert value >= 0.85, (name, value)
    m = sitk.GetArrayFromImage(mask).astype(bool)
    lesion = sitk.GetArrayFromImage(case.lesion_mask).astype(bool)
    assert m[lesion].mean() > 0.95, name
    tissue = sitk.GetArrayFromImage(case.tissue)
    assert np.mean(tissue[m] == TISSUE_LABELS["lung"]) < 0.005, name
    # the T1's method on the same image (dark edges) is worse: the fallback is not the T1 rule by chance
    assert dice(breast_mask(sitk.Cast(case.images["pre"], sitk.sitkFloat32)), case.breast_mask) < value


@pytest.mark.parametrize("bright", [False, True])
def test_slice_objectness_equals_the_filter_on_each_slice_alone(bright):
    """The framed one-call mosaic gives, voxel for voxel, ObjectnessMeasure run on every slice on its own."""
    rng = np.random.default_rng(3)
    slices = rng.normal(size=(5, 23, 31)).astype(np.float32)
    slices[:, 11, :] += 4.0  # a line, so that the measure is not zero everywhere
    cfg = MaskConfig()
    together = slice_objectness(slices, (0.7, 1.3), cfg, bright)
    for k, values in enumerate(slices):
        alone = sitk.GetImageFromArray(values)
        alone.SetSpacing((0.7, 1.3))
        expected = sitk.GetArrayFromImage(sitk.ObjectnessMeasure(
            alone, alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma, scaleObjectnessMeasure=False, objectDimension=1,
            brightObject=bright))
        assert np.array_equal(together[k], expected)
    assert together.max() > 0
