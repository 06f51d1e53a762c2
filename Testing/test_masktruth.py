"""Maps scored against a lesion mask (Training/masktruth.py) on hand-made maps with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from Training.masktruth import MaskScore, mask_scores, mask_table, mean_ci

SIZE = (20, 20, 10)  # input grid (i, j, k), 2 mm voxels
CUBE = (slice(5, 9), slice(5, 9), slice(3, 6))  # lesion voxels i 5-8, j 5-8, k 3-5: 48 voxels


def _grid(spacing=2.0) -> sitk.Image:
    grid = sitk.Image(list(SIZE), sitk.sitkUInt8)
    grid.SetSpacing([spacing] * 3)
    grid.SetOrigin((-10.0, 4.0, 20.0))
    return grid


def _case(tmp_path, mask_spacing: float):
    """A case folder whose truth is the cube, stored on a grid of ``mask_spacing`` (1: twice as fine)."""
    grid = _grid()
    fine = round(2.0 / mask_spacing)
    arr = np.zeros(tuple(n * fine for n in SIZE), np.uint8)
    arr[tuple(slice(s.start * fine, s.stop * fine) for s in CUBE)] = 1
    mask = sitk.GetImageFromArray(arr.transpose(2, 1, 0).copy())
    mask.SetSpacing([mask_spacing] * 3)
    # voxel edges coincide with the input grid's: the first centre moves by half the spacing change
    mask.SetOrigin(tuple(o - (2.0 - mask_spacing) / 2 for o in grid.GetOrigin()))
    (tmp_path / "truth").mkdir()
    sitk.WriteImage(mask, str(tmp_path / "truth" / "lesion_mask.nrrd"))
    return grid


def _point(grid, ijk):
    return tuple(grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))


@pytest.mark.parametrize("mask_spacing", [2.0, 1.0])
def test_scores_on_known_maps(tmp_path, mask_spacing):
    grid = _case(tmp_path, mask_spacing)
    centroid = np.array(_point(grid, (6.5, 6.5, 4.0)))
    inside_map = np.zeros(SIZE, np.float32)
    inside_map[CUBE] = 1.0 + np.random.default_rng(0).random((4, 4, 3))  # top 1 % (40 of 4000) all in the cube
    far_map = np.zeros(SIZE, np.float32)
    far_map[15:19, 15:19, 0:3] = 1.0
    edge = _point(grid, (10.0, 6.5, 4.0))  # 1.5 voxels = 3 mm beyond the cube's last voxel centre along i
    far = _point(grid, (17.0, 17.0, 1.0))
    prep = SimpleNamespace(input_grid=grid, valid=np.ones(SIZE, bool))
    a = SimpleNamespace(prep=prep, coam_input=inside_map, coam_peak_lps=tuple(centroid), cam_input=far_map,
                        cam_peak_lps=edge, fine_input=far_map, fine_peak_lps=far)
    s = mask_scores(a, tmp_path)
    assert s["coam"] == MaskScore(True, True, pytest.approx(0.0, abs=1e-6), 1.0)
    assert (s["cam"].inside, s["cam"].within_5mm) == (False, True)
    assert s["cam"].centroid_mm == pytest.approx(7.0)  # 3.5 voxels of 2 mm
    assert s["cam"].top1_share == 0.0
    assert (s["fine"].inside, s["fine"].within_5mm) == (False, False)
    assert s["fine"].centroid_mm == pytest.approx(np.linalg.norm(np.subtract(far, centroid)))
    assert mask_scores(a, tmp_path / "truth") is None  # a folder without a mask


def test_mean_ci_and_groups():
    c = mean_ci([2.0] * 10)
    assert (c["mean"], c["ci_low"], c["ci_high"], c["n"]) == (2.0, 2.0, 2.0, 10)
    x = np.random.default_rng(1).integers(0, 2, 400).astype(float)
    c = mean_ci(x)
    half = 1.96 * x.std() / np.sqrt(x.size)  # normal approximation of the CI of a mean
    assert c["ci_low"] == pytest.approx(x.mean() - half, abs=0.01)
    assert c["ci_high"] == pytest.approx(x.mean() + half, abs=0.01)
    hit, miss = MaskScore(True, True, 1.0, 0.5), MaskScore(False, False, 30.0, 0.0)
    records = [(1, True, {"coam": hit}), (1, False, {"coam": miss}), (0, True, {"coam": miss})]
    t = mask_table(records, n_boot=100)
    assert t["true_positive"]["coam"]["inside"]["mean"] == 1.0 and t["true_positive"]["coam"]["inside"]["n"] == 1
    assert t["malignant"]["coam"]["inside"]["mean"] == 0.5 and t["malignant"]["coam"]["centroid_mm"]["mean"] == 15.5
    assert t["malignant"]["cam"]["inside"]["n"] == 0
