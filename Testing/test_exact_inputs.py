"""Inputs kept in their voxel type (``check_image(keep_type=True)``, the warm worker's inputs) give the network
input of the same volumes cast to float32 first, bit for bit, on aligned and on resampled grids."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.phantom.synth import synth_case
from BreastCMSLLib.pipeline.preprocess import CaseInputs, load_case, preprocess_case
from BreastCMSLLib.pipeline.volumes import check_image


def image(array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.SetSpacing((0.8, 0.9, 1.5))
    out.SetOrigin((-3.0, 4.0, 7.0))
    return out


@pytest.mark.parametrize("dtype, kept", [(np.int16, True), (np.uint16, True), (np.uint8, True),
                                         (np.int32, False), (np.float64, False)])
def test_keep_type_keeps_types_float32_holds_exactly(dtype, kept):
    values = np.random.default_rng(0).integers(0, 200, (4, 5, 6)).astype(dtype)
    checked = check_image(image(values), "v", keep_type=True)
    assert (checked.GetPixelID() != sitk.sitkFloat32) == kept
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(checked), values)
    assert check_image(image(values), "v").GetPixelID() == sitk.sitkFloat32


def test_an_empty_integer_volume_is_refused():
    with pytest.raises(InputError, match=r"every voxel is 7\.0"):
        check_image(image(np.full((4, 5, 6), 7, np.int16)), "v", keep_type=True)
    with pytest.raises(InputError, match="NaN or Inf"):
        check_image(image(np.array([np.nan, 1.0] * 60).reshape(4, 5, 6)), "v", keep_type=True)


@pytest.mark.parametrize("spacing", [None, (2.0, 2.0, 2.0)])  # the reference's lattice (copies), resampled
def test_int16_inputs_give_the_float32_network_input_bit_for_bit(tmp_path, spacing):
    synth_case(tmp_path / "case", seed=5, label=1, shape=(96, 64, 40), spacing=(3.5, 3.5, 3.5))
    floats = load_case(tmp_path / "case")
    raw = [sitk.ReadImage(str(tmp_path / "case" / f"{name}.nrrd"))
           for name in ("t1", "pre", *(f"post_{k}" for k in range(1, 7)))]
    assert raw[1].GetPixelID() == sitk.sitkInt16
    checked = [check_image(volume, "v", keep_type=True) for volume in raw]
    kept = CaseInputs(checked[0], checked[1:], "phases", floats.sources)
    cfg = PreprocessConfig(input_size=(64, 48, 32), spacing=spacing)
    a, b = preprocess_case(floats, cfg), preprocess_case(kept, cfg)
    assert a.array.any() and np.array_equal(a.array, b.array)
    assert np.array_equal(sitk.GetArrayViewFromImage(a.input_grid), sitk.GetArrayViewFromImage(b.input_grid))
