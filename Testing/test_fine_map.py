"""The fine map: sub-cell peaks recover a known position, the paper's COAM and CAM stay bit-identical, the
fine peak is the study's candidate of the same name, and the lesion-truth metrics equal hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BreastCMSLLib.config import FineMapConfig
from BreastCMSLLib.network.attention import carried_to, coam, fine_map
from BreastCMSLLib.network.modelfile import load_model
from BreastCMSLLib.pipeline.analyze import analyze_case, forward, select_device
from BreastCMSLLib.pipeline.output import write_analysis
from BreastCMSLLib.pipeline.peaks import centroid_peak, quadratic_peak, stage_point_lps
from BreastCMSLLib.pipeline.preprocess import load_case
from Training.layercam import layercam_maps
from Training.lesiontruth import MapScore, dilated, inside, top_share
from Training.localize import CaseLocalization, candidate_names, fine_name, score_case
from Training.study import map_rows

from .conftest import run_cli

HOT = np.array([5.3, 4.7, 3.4])  # a sub-cell position on a 12 x 10 x 8 feature grid


def hot_block_features(channels: int = 8) -> torch.Tensor:
    """(1, C, 12, 10, 8) non-negative features: a Gaussian blob (sd 1.2 cells) centred at ``HOT`` in every
    channel over a weak random background."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (12, 10, 8)], indexing="ij"), axis=-1)
    blob = np.exp(-((grid - HOT) ** 2).sum(-1) / (2 * 1.2**2))
    rng = np.random.default_rng(0)
    x = blob[None] * rng.uniform(0.8, 1.2, (channels, 1, 1, 1)) + 0.02 * rng.random((channels, 12, 10, 8))
    return torch.from_numpy(x[None].astype(np.float32))


def test_a_hot_block_at_a_sub_cell_position_is_recovered_within_a_voxel():
    small = coam(hot_block_features())[0].numpy()
    assert np.array(np.unravel_index(small.argmax(), small.shape)).tolist() == [5, 5, 3]  # the node is off
    for estimate in (quadratic_peak(small), centroid_peak(small)):
        assert np.abs(estimate - HOT).max() < 0.25, estimate
    # through the gate (layer4's COAM, half as fine, carried onto this grid) and onto an input grid (LPS mm)
    coarse = torch.from_numpy(small[::2, ::2, ::2].copy())
    gated = fine_map(torch.from_numpy(small), coarse, 2, gated=True).numpy()
    grid = sitk.Image([192, 160, 128], sitk.sitkUInt8)
    grid.SetSpacing((0.7, 0.8, 1.5))
    grid.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    point = stage_point_lps(quadratic_peak(gated), 16, grid)
    truth = grid.TransformContinuousIndexToPhysicalPoint((16 * HOT).tolist())
    assert np.abs(np.array(grid.TransformPhysicalPointToContinuousIndex(point)) - 16 * HOT).max() < 16 * 0.35
    assert np.linalg.norm(np.subtract(point, truth)) < 16 * 0.35 * 1.5


def test_the_gate_puts_layer4_voxel_f_on_the_finer_voxel_ratio_f():
    coarse = torch.rand(4, 3, 2)
    fine = carried_to(coarse, (8, 6, 4), 2)
    assert torch.allclose(fine[::2, ::2, ::2], coarse)
    assert fine[1, 0, 0] == pytest.approx(float(coarse[:2, 0, 0].mean()), abs=1e-6)
    assert fine[7, 5, 3] == pytest.approx(float(coarse[3, 2, 1]), abs=1e-6)  # constant beyond the last centre


def test_coam_and_cam_are_bit_identical_with_and_without_the_fine_map(tiny_case, tiny_model_path):
    loaded = load_model(tiny_model_path)
    inputs = load_case(tiny_case)
    with_fine, without = analyze_case(inputs, loaded), analyze_case(inputs, loaded, fine=None)
    assert without.fine is None and without.fine_peak_lps is None and with_fine.fine is not None
    for name in ("coam", "cam", "coam_label", "cam_label"):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(getattr(with_fine, name)),
                                      sitk.GetArrayViewFromImage(getattr(without, name)))
    assert with_fine.coam_peak_lps == without.coam_peak_lps and with_fine.cam_peak_lps == without.cam_peak_lps
    assert with_fine.probability == without.probability
    # the kept stages change nothing in the forward itself
    dev = select_device("cpu")
    plain, _ = forward(loaded, with_fine.prep.array, dev)
    kept, _ = forward(loaded, with_fine.prep.array, dev, keep_stages=True)
    assert plain.stages is None and set(kept.stages) == {"layer2", "layer3"}
    assert torch.equal(plain.features, kept.features) and torch.equal(plain.logit_map, kept.logit_map)
    assert kept.stages["layer3"].shape[2:] == tuple(-(-n // 16) for n in with_fine.prep.array.shape[1:])


def test_the_fine_peak_is_the_study_candidate_of_its_name(tiny_case, tiny_model_path):
    loaded = load_model(tiny_model_path)
    a = analyze_case(load_case(tiny_case), loaded)
    a.grid_maps.update(layercam_maps(loaded, a.prep.array, "cpu"))
    assert a.grid_maps["layercam_layer3"].shape == a.grid_maps["coam_layer3"].shape
    assert a.grid_maps["layercam_layer2"].shape == tuple(-(-n // 8) for n in a.prep.array.shape[1:])  # layer2's grid
    centre = json.loads((tiny_case / "case.json").read_text())["center_lps"]
    scores = score_case(a, centre, tiny_case)
    assert set(scores) == set(candidate_names())
    assert scores[fine_name()].peak == pytest.approx(a.fine_peak_lps, abs=1e-9)
    assert scores["coam/node"].peak == pytest.approx(a.coam_peak_lps, abs=1e-9)
    assert scores["cam/node"].peak == pytest.approx(a.cam_peak_lps, abs=1e-9)
    assert fine_name(FineMapConfig("layer2", False, "centroid")) == "coam_layer2/centroid"
    assert fine_name(FineMapConfig("layer3", True, "node")) == "gated_layer3/node"


def test_writing_without_the_fine_map_leaves_no_fine_files(tiny_case, tiny_model_path, tmp_path):
    loaded = load_model(tiny_model_path)
    inputs = load_case(tiny_case)
    out = tmp_path / "out"
    full = write_analysis(analyze_case(inputs, loaded), out, {}, (0.0, 0.0, 0.0))
    assert (out / "fine.nrrd").exists() and "fine_peak_lps" in full and "fine_distance_mm" in full
    plain = write_analysis(analyze_case(inputs, loaded, fine=None), out, {}, (0.0, 0.0, 0.0))
    assert not (out / "fine.nrrd").exists() and not (out / "fine_label.nrrd").exists()
    assert "fine_peak_lps" not in plain and "fine_distance_mm" not in plain
    assert plain["coam_distance_mm"] == full["coam_distance_mm"]


def test_the_command_line_skips_the_fine_map_on_request(tiny_case, tiny_model_path, tmp_path):
    run = run_cli("analyze", tiny_case, "--model", tiny_model_path, "--out", tmp_path / "plain", "--device", "cpu",
                  "--no-fine-map")
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "plain" / "result.json").read_text())
    assert "fine_peak_lps" not in result and "coam_peak_lps" in result
    assert not (tmp_path / "plain" / "fine.nrrd").exists()
    refused = run_cli("analyze", tiny_case, "--model", tiny_model_path, "--out", tmp_path / "no", "--no-fine-map",
                      "--dicom-seg", "--seg-map", "fine")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--seg-map" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_lesion_truth_metrics_equal_a_hand_computation():
    mask = sitk.Image([40, 40, 20], sitk.sitkUInt8)
    mask.SetSpacing((1.0, 1.0, 2.5))
    mask[20, 20, 10] = 1  # one lesion voxel at LPS (20, 20, 25)
    grown = dilated(mask)  # radius 5 mm: 5, 5 and 2 voxels (5 / 2.5)
    assert inside(grown, (25.0, 20.0, 25.0)) and not inside(grown, (26.0, 20.0, 25.0))
    assert inside(grown, (20.0, 20.0, 30.0)) and not inside(grown, (20.0, 20.0, 32.5))
    assert not inside(grown, (-100.0, 0.0, 0.0))
    values = np.arange(200, dtype=float).reshape(10, 10, 2)
    region = np.zeros(values.shape, bool)
    region.flat[[199, 10]] = True
    assert top_share(values, region) == 0.5  # top 1 % of 200 voxels: 199 and 198; 199 is in the region

    def case(name: str, coam_mm: float, cam_mm: float, fine_mm: float, hit: bool, share: float):
        scores = {n: MapScore((0.0, 0.0, 0.0), coam_mm, False, 0.0) for n in candidate_names()}
        scores["cam/node"] = MapScore((0.0, 0.0, 0.0), cam_mm, False, 0.0)
        scores[fine_name()] = MapScore((0.0, 0.0, 0.0), fine_mm, hit, share)
        return CaseLocalization(name, 1, 0.9, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0, (0, 0, 0),
                                (0, 0, 0), (0, 0, 0), scores)

    cases = [case("a", 30, 40, 5, True, 0.5), case("b", 40, 35, 10, True, 0.25), case("c", 50, 60, 30, False, 0.0)]
    row = map_rows(cases, 2000, 0)[fine_name()]
    assert row["mm"]["mean"] == pytest.approx(15.0) and row["mm"]["median"] == 10.0
    assert row["mm"]["std"] == pytest.approx(math.sqrt((100 + 25 + 225) / 3))
    assert row["hits"] == 2 and row["with_mask"] == 3 and row["pointing"] == pytest.approx(2 / 3)
    assert row["top1_share"] == pytest.approx(0.25)
    # three paired differences of one sign: the exact two-sided signed-rank p is 2 / 2^3
    assert row["wilcoxon_p_vs_coam"] == pytest.approx(0.25) and row["wilcoxon_p_vs_cam"] == pytest.approx(0.25)
    assert 5.0 <= row["mm_ci"][0] <= 15.0 <= row["mm_ci"][1] <= 30.0
    assert math.isnan(map_rows(cases, 2000, 0)["coam/node"]["wilcoxon_p_vs_coam"])  # itself: no difference
