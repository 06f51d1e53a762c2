"""The maps stage's shortcuts give the floats of its plain formulas, bit for bit: the voxels inside the reference
volume taken as a box (a view) where the lattices coincide, as a mask elsewhere (min-max normalization and
plateau peaks against the mask formulas, written out here), on a padded and on a resampled input grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.phantom.synth import synth_case
from BreastCMSLLib.pipeline.maps import labelmap, normalized_on_input_grid, peak_lps, upsample_linear
from BreastCMSLLib.pipeline.peaks import true_indices
from BreastCMSLLib.pipeline.preprocess import load_case, preprocess_case


def plain_normalized(small: np.ndarray, prep) -> np.ndarray:
    up = upsample_linear(small, prep.input_grid.GetSize())
    inside = up[prep.valid]
    lo, hi = float(inside.min()), float(inside.max())
    up -= lo
    up *= 1.0 / (hi - lo)
    up[~prep.valid] = 0.0
    return up


def plain_peak_index(values: np.ndarray, valid: np.ndarray, spacing) -> tuple[int, ...]:
    """The peak rule (pipeline/peaks.py) on an axis-aligned LPS grid: index * spacing is the point less the origin."""
    masked = np.where(valid, values, -np.inf)
    plateau = np.argwhere(masked == masked.max())  # (i, j, k), index order
    points = plateau * np.asarray(spacing)
    distance = np.linalg.norm(points - points.mean(axis=0), axis=1)
    nearest = np.flatnonzero(distance <= distance.min() + 1e-6)
    return tuple(int(v) for v in plateau[nearest[np.lexsort(plateau[nearest].T[::-1])[0]]])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    synth_case(root / "case", seed=4, label=1, shape=(96, 64, 40), spacing=(3.5, 3.5, 3.5))
    return load_case(root / "case")


@pytest.mark.parametrize("spacing, box", [(None, True), ((3.0, 3.2, 3.1), False)])
def test_box_and_mask_give_the_plain_floats_and_peaks(case, spacing, box):
    prep = preprocess_case(case, PreprocessConfig(input_size=(64, 64, 64), spacing=spacing))  # padded in j, k
    assert not prep.valid.all() and prep.valid.any()
    assert isinstance(prep.inside, tuple) == box
    if box:
        assert prep.valid[prep.inside].all() and prep.valid.sum() == prep.valid[prep.inside].size
    rng = np.random.default_rng(1)
    plateau = np.pad(rng.random((2, 2, 1)), ((0, 0), (0, 0), (0, 1)), constant_values=2)  # its top: a k plateau
    for small, voxels_at_top in ((rng.random((2, 2, 2)), 1), (plateau, 100)):
        expected = plain_normalized(small, prep)
        got = normalized_on_input_grid(small, prep)
        assert got.strides == expected.strides and np.array_equal(got, expected)
        assert (expected[prep.valid] == expected.max()).sum() >= voxels_at_top
        index = plain_peak_index(expected, prep.valid, prep.input_grid.GetSpacing())
        assert peak_lps(got, prep) == prep.input_grid.TransformIndexToPhysicalPoint(index)


def test_a_flat_map_is_zero(case):
    prep = preprocess_case(case, PreprocessConfig(input_size=(64, 64, 64)))
    assert not normalized_on_input_grid(np.ones((2, 2, 2)), prep).any()


@pytest.mark.parametrize("fraction", [0.5, 0.7, 0.3])  # the threshold in float32: exact, above, below
def test_labelmap_thresholds_as_simpleitk_does(fraction):
    """Voxels one float32 step either side of fraction x max, and on it: numpy's comparison gives SimpleITK's."""
    top = np.float32(0.9)
    at = np.float32(fraction * float(top))
    steps = [np.nextafter(at, -1, dtype=np.float32), at, np.nextafter(at, 1, dtype=np.float32), top]
    values = np.random.default_rng(2).random((6, 5, 4)).astype(np.float32) * top
    values.flat[:4] = steps
    image = sitk.GetImageFromArray(values)
    image.SetOrigin((1.0, 2.0, 3.0))
    label = labelmap(image, fraction)
    expected = sitk.Cast(sitk.GreaterEqual(image, fraction * float(top)), sitk.sitkUInt8)
    assert label.GetPixelID() == sitk.sitkUInt8 and label.GetOrigin() == (1.0, 2.0, 3.0)
    assert np.array_equal(sitk.GetArrayViewFromImage(label), sitk.GetArrayViewFromImage(expected))
    assert sitk.GetArrayViewFromImage(label).flat[:4].tolist() == [0, 1, 1, 1]


def test_true_indices_in_index_order_whatever_the_storage():
    hits = np.random.default_rng(3).random((7, 6, 5)) > 0.8
    for stored in (hits, np.asfortranarray(hits), hits[1:, ::2, 1:4], np.asfortranarray(hits)[1:, 2:, :3]):
        assert np.array_equal(true_indices(stored), np.argwhere(stored))
