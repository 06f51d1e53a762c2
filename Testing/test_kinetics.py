"""Kinetics (issue 28): PE/SER maps, the curve at a point and its classes, FTV and the phase choice, against values
worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.kinetics import (
    KineticsConfig,
    box_region,
    curve_at,
    delayed_class,
    enhancement_maps,
    functional_volume,
    initial_class,
    neighbour_count,
    sphere_mean,
)
from BreastCMSLLib.pipeline.phase_times import (
    PhaseTimes,
    case_times,
    choose_phases,
    given_times,
    read_times_file,
    write_times_file,
)


def image(array_kji: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(np.asarray(array_kji, np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


# ------------------------------------------------------------------------------------------------- maps
def test_pe_ser_and_labels_by_hand():
    # five voxels (one row): washout, plateau, persistent, weak (PE 50 < 70), below the background threshold
    pre = np.array([[[100, 100, 100, 100, 10]]], np.float32)
    early = np.array([[[250, 200, 180, 150, 40]]], np.float32)
    late = np.array([[[200, 200, 220, 160, 60]]], np.float32)
    maps = enhancement_maps(pre, early, late, KineticsConfig(background=60))
    # 95th percentile of pre = 100 -> background 60: the last voxel (pre 10) is background
    assert maps.background == pytest.approx(60.0)  # every second voxel of one row: 100, 100, 10
    np.testing.assert_allclose(maps.pe[0, 0], [150, 100, 80, 50, 0], atol=1e-4)
    # SER = (early - pre) / (late - pre): 150/100, 100/100, 80/120, 50/60, background 0
    np.testing.assert_allclose(maps.ser[0, 0], [1.5, 1.0, 80 / 120, 50 / 60, 0], atol=1e-5)
    assert maps.ser_label[0, 0].tolist() == [3, 2, 1, 0, 0]
    off = enhancement_maps(pre, early, late, KineticsConfig(background=0))
    assert off.pe[0, 0, 4] == pytest.approx(300.0) and off.ser_label[0, 0, 4] == 1  # 30/50 = 0.6: persistent


def test_complete_washout_is_capped_and_one_phase_gives_pe_only():
    pre = np.full((1, 1, 2), 100, np.float32)
    early = np.array([[[200, 90]]], np.float32)
    late = np.array([[[95, 80]]], np.float32)
    maps = enhancement_maps(pre, early, late, KineticsConfig())
    assert maps.ser[0, 0].tolist() == [5.0, 0.0] and maps.ser_label[0, 0].tolist() == [3, 0]
    only = enhancement_maps(pre, early, None, KineticsConfig())
    assert only.ser is None and only.ser_label is None and only.pe[0, 0, 0] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------------ curve
@pytest.mark.parametrize(("early", "late", "initial", "delayed"), [
    (40.0, 60.0, "slow", "persistent"), (80.0, 84.0, "medium", "plateau"), (150.0, 120.0, "fast", "washout"),
    (100.0, 111.0, "medium", "persistent"), (101.0, 91.0, "fast", "plateau")])
def test_classes_at_the_limits(early, late, initial, delayed):
    assert initial_class(early) == initial and delayed_class(early, late) == delayed


def test_sphere_mean_counts_the_voxel_centres_within_the_radius():
    """Spacing 1 x 1 x 2 mm, radius 2 mm around a voxel centre: in-plane offsets with i^2 + j^2 <= 4 at k = 0
    (13 voxels) and i = j = 0 at k = +-1 (2 mm away: 2 voxels) = 15 voxels. Values = 1000 i + k, so the mean is
    the centre's value (the sphere is symmetric)."""
    k, _j, i = np.meshgrid(np.arange(9), np.arange(9), np.arange(9), indexing="ij")
    values = (1000 * i + k).astype(np.float32)
    img = image(values, spacing=(1.0, 1.0, 2.0), origin=(10.0, 20.0, 30.0))
    centre = img.TransformIndexToPhysicalPoint([4, 4, 4])
    assert sphere_mean(img, centre, 2.0, "x") == pytest.approx(4004.0)
    marker = np.zeros((9, 9, 9), np.float32)
    marker[4, 4, 4] = 15.0  # the mean over 15 voxels of one 15 and fourteen 0s is 1
    assert sphere_mean(image(marker, spacing=(1.0, 1.0, 2.0)), (4.0, 4.0, 8.0), 2.0, "x") == pytest.approx(1.0)
    with pytest.raises(InputError, match="outside the volume"):
        sphere_mean(img, (-50.0, 0.0, 0.0), 2.0, "x")


def test_curve_at_a_point_of_a_washout_block():
    shape = (6, 6, 6)
    pre, posts = np.full(shape, 200.0), []
    for gain in (0.9, 1.6, 1.4, 1.2):  # relative enhancement 90, 160, 140, 120 %
        posts.append(pre * (1 + gain))
    phases = [image(a) for a in (pre, *posts)]
    curve = curve_at(phases, ["pre", "p1", "p2", "p3", "p4"], (3.0, 3.0, 3.0), early=1, late=3, radius_mm=2.0)
    np.testing.assert_allclose(curve.percent, [90, 160, 140, 120], atol=1e-4)
    assert curve.initial == "fast" and curve.delayed == "washout"
    assert curve.change_percent == pytest.approx(100 * (120 - 160) / 160)
    assert curve.as_dict()["curve_percent"] == [90.0, 160.0, 140.0, 120.0]


# -------------------------------------------------------------------------------------------------- FTV
def test_neighbour_count_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    passing = rng.random((7, 8, 9)) < 0.4
    padded = np.pad(passing, 1).astype(int)
    reference = sum(np.roll(np.roll(np.roll(padded, a, 0), b, 1), c, 2)
                    for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1))[1:-1, 1:-1, 1:-1] - passing
    np.testing.assert_array_equal(neighbour_count(passing), reference)


def test_ftv_of_a_cube_drops_isolated_voxels_and_splits_by_ser():
    """A 4x4x4 cube of enhancing voxels (every voxel has >= 7 passing neighbours), a lone voxel and a pair (1
    neighbour each): FTV = 64 voxels of 2 mm^3 = 0.128 mL. Half the cube washes out, half persists."""
    shape = (12, 12, 12)
    pre = np.full(shape, 100.0, np.float32)
    early = pre.copy()
    late = pre.copy()
    early[2:6, 2:6, 2:6] = 250.0
    late[2:6, 2:6, 2:4] = 200.0  # SER 1.5: washout
    late[2:6, 2:6, 4:6] = 300.0  # SER 0.75: persistent
    early[9, 9, 9] = early[9, 2, 2] = early[9, 2, 3] = 300.0
    late[9, 9, 9] = late[9, 2, 2] = late[9, 2, 3] = 300.0
    cfg = KineticsConfig()
    maps = enhancement_maps(pre, early, late, cfg)
    region = np.ones(shape, bool)
    ftv = functional_volume(pre, maps.pe, maps.ser, region, 0.002, cfg, "box")
    assert ftv.ftv_ml == pytest.approx(0.128)
    assert ftv.ser_volumes_ml == {"persistent": pytest.approx(0.064), "plateau": 0.0, "washout": pytest.approx(0.064)}
    assert ftv.label[2:6, 2:6, 2:4].min() == 3 and ftv.label[2:6, 2:6, 4:6].min() == 1
    assert ftv.label.sum() == 32 * 3 + 32 * 1
    # the background threshold (60 % of the 95th percentile in the region) removes voxels of low pre signal
    pre_low = pre.copy()
    pre_low[2:6, 2:6, 2] = 50.0
    cut = functional_volume(pre_low, enhancement_maps(pre_low, early, late, cfg).pe, maps.ser, region, 0.002, cfg, "b")
    assert cut.ftv_ml == pytest.approx(0.002 * 48) and cut.background_level == pytest.approx(60.0)
    with pytest.raises(InputError, match="no voxel"):
        functional_volume(pre, maps.pe, maps.ser, np.zeros(shape, bool), 0.002, cfg, "box")


def test_box_region_on_a_flipped_grid():
    """Grid i -> -x (flipped), spacing 2 mm: voxel centres at x = 20, 18, ..., 2 (i = 0..9); y, z at 0, 1, 2, ....
    The box x in [5, 11], y in [0.5, 2.5], z in [0, 0] holds x = 6, 8, 10 (i = 7, 6, 5), y = 1, 2, z = 0."""
    grid = image(np.zeros((4, 4, 10)), spacing=(2.0, 1.0, 1.0), origin=(20.0, 0.0, 0.0),
                 direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    region = box_region(grid, (11.0, 2.5, 0.0), (5.0, 0.5, 0.0), "--roi-box")
    assert sorted(zip(*np.nonzero(region))) == sorted((0, j, i) for i in (5, 6, 7) for j in (1, 2))
    with pytest.raises(InputError, match="outside the volume"):
        box_region(grid, (100.0, 0, 0), (110.0, 1, 1), "--roi-box")
    with pytest.raises(InputError, match="no voxel centre"):
        box_region(grid, (2.5, 0.2, 0.2), (3.5, 0.4, 0.4), "--roi-box")


# ------------------------------------------------------------------------------------------ phase times
def test_phase_choice():
    times = PhaseTimes.from_clock([75, 150, 225, 300, 375, 450], 0.0, "t")
    assert (choose_phases(times, 6).early, choose_phases(times, 6).late) == (1, 5)
    # without the injection the first post-contrast phase is 0 s: 0, 75, ..., 375 -> early 150 (k=2), late 375
    relative = PhaseTimes.from_clock([75, 150, 225, 300, 375, 450], None, "t")
    assert relative.post_s == (0, 75, 150, 225, 300, 375)
    assert (choose_phases(relative, 6).early, choose_phases(relative, 6).late) == (2, 5)
    assert (choose_phases(times, 6, early_s=60, late_s=200).early, choose_phases(times, 6, 60, 200).late) == (0, 2)
    two = choose_phases(PhaseTimes(None, "t"), 2)
    assert (two.early, two.late) == (0, 1)
    one = choose_phases(PhaseTimes(None, "t"), 1)
    assert one.late is None and "PE only" in one.note
    last = choose_phases(times, 6, early_s=1000)
    assert last.early == 5 and last.late is None and "no post-contrast phase after" in last.note
    with pytest.raises(InputError, match="without acquisition times"):
        choose_phases(PhaseTimes(None, "case"), 4)


def test_times_file_round_trip_and_errors(tmp_path):
    write_times_file(tmp_path, [75, 150, 225], injection_s=0)
    assert json.loads((tmp_path / "times.json").read_text()) == {"post_s": [75, 150, 225], "injection_s": 0.0}
    times = case_times(tmp_path, 3)
    assert times.post_s == (75, 150, 225) and times.injection_given
    assert case_times(tmp_path / "missing", 3).post_s is None
    with pytest.raises(InputError, match="2 times given for 3"):
        given_times([1, 2], None, 3)
    bad = tmp_path / "bad.json"
    for text, problem in (("{", "not valid JSON"), ('{"post_s": "x"}', "expected"),
                          ('{"post_s": [1, 2]}', "2 times for 3")):
        bad.write_text(text)
        with pytest.raises(InputError, match=problem):
            read_times_file(bad, 3)
