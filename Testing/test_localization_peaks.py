"""A well-defined peak: a plateau of maxima resolves to the plateau voxel nearest its centroid, the same
physical point however the volume is stored, and the written map's maximum sits there."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.network.modelfile import load_model
from BreastCMSLLib.pipeline.analyze import analyze_case
from BreastCMSLLib.pipeline.maps import normalized_on_input_grid, peak_lps
from BreastCMSLLib.pipeline.peaks import plateau_peak_index, plateau_peak_lps
from BreastCMSLLib.pipeline.preprocess import CaseInputs, load_case, preprocess_case, to_reference

from .conftest import TINY_INPUT

FLIPS = [True, False, True]  # i and k stored reversed


def flipped(case: CaseInputs) -> CaseInputs:
    """The same physical case stored with its i and k axes reversed."""
    return CaseInputs(sitk.Flip(case.t1, FLIPS), [sitk.Flip(s, FLIPS) for s in case.series], case.kind, case.sources)


def value_at(image: sitk.Image, lps) -> float:
    """The voxel value of ``image`` at an LPS point that must be a voxel centre."""
    index = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in lps]))
    assert np.allclose(index, np.rint(index), atol=1e-4)
    return float(image[tuple(int(v) for v in np.rint(index))])


def image_max(image: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(image).max())


def test_plateau_resolves_to_the_voxel_nearest_its_centroid():
    grid = sitk.Image([10, 8, 6], sitk.sitkFloat32)
    grid.SetSpacing((1.1, 1.1, 1.1))
    values = np.zeros((10, 8, 6), np.float32)
    values[5:10, 3, 2] = 1.0  # centroid i = 7: a plateau voxel
    assert plateau_peak_index(values, grid) == (7, 3, 2)
    values[5, 3, 2] = 0.0  # centroid i = 7.5: equidistant 7 and 8 -> the smaller L coordinate
    assert plateau_peak_index(values, grid) == (7, 3, 2)
    values[[0, 9], 0, 0] = 1.0  # a disconnected plateau: centroid between the parts, snapped into it
    peak = plateau_peak_index(values, grid)
    assert values[peak] == 1.0
    valid = np.zeros_like(values, bool)
    valid[0, 0, 0] = True
    assert plateau_peak_index(values, grid, valid) == (0, 0, 0)
    values[:] = 0.0
    values[4, 4, 4] = 2.0
    assert plateau_peak_index(values, grid) == (4, 4, 4)
    # the same map stored with i reversed: the same LPS point
    other = sitk.Image([10, 8, 6], sitk.sitkFloat32)
    other.SetSpacing((1.1, 1.1, 1.1))
    other.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    other.SetOrigin((9 * 1.1, 0.0, 0.0))
    values[6:10, 2, 1] = 2.0
    assert plateau_peak_lps(values, grid) == pytest.approx(plateau_peak_lps(values[::-1], other), abs=1e-9)


def test_edge_plateau_gives_one_physical_peak_in_both_storages(tiny_case):
    """A map whose maximum is the last feature along i: every input voxel beyond that feature centre is
    maximal. The peak is the same LPS point for both storages and the written map is maximal there."""
    base = load_case(tiny_case)
    small = np.zeros((2, 2, 1), np.float32)
    small[1, 0, 0] = 3.0
    small[0, 1, 0] = 1.0
    peaks = []
    for inputs in (base, flipped(base)):
        prep = preprocess_case(inputs, PreprocessConfig(input_size=TINY_INPUT))
        on_input = normalized_on_input_grid(small, prep)
        assert int((on_input == on_input.max()).sum()) > 1  # a real plateau
        peak = peak_lps(on_input, prep)
        written = to_reference(on_input, prep)
        assert value_at(written, peak) == image_max(written)
        peaks.append(peak)
    assert peaks[0] == pytest.approx(peaks[1], abs=1e-6)


def test_restored_case_same_peaks_and_written_maps_maximal_there(tiny_case, tiny_model_path):
    loaded = load_model(tiny_model_path)
    base = load_case(tiny_case)
    a, b = analyze_case(base, loaded, device="cpu"), analyze_case(flipped(base), loaded, device="cpu")
    for name in ("coam", "cam"):
        pa, pb = getattr(a, f"{name}_peak_lps"), getattr(b, f"{name}_peak_lps")
        assert pa == pytest.approx(pb, abs=1e-6), name
        for analysis in (a, b):
            written = getattr(analysis, name)
            assert value_at(written, pa) == image_max(written), name
