"""The synthetic DCE phantom: determinism, geometry, truth consistency, kinetics, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.phantom.anatomy import TISSUE_LABELS
from BreastCMSLLib.phantom.case import PhantomCase
from BreastCMSLLib.phantom.grid import resolve_grid
from BreastCMSLLib.phantom.parameters import (
    DEFAULT_DIFFICULTY,
    PHASE_TIMES_MIN,
    PhantomConfig,
    draw_parameters,
    kinetic_type,
)
from BreastCMSLLib.phantom.synth import make_case, synth_case, write_case
from BreastCMSLLib.pipeline.volumes import find_case_files, read_volume

TINY = (96, 64, 40)  # 3.75 x 3.625 x 3.6 mm, the default field of view
SERIES = ["t1", "pre"] + [f"post_{k}" for k in range(1, 7)]


def arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def tiny_cases() -> dict[int, PhantomCase]:
    return {seed: make_case(seed, PhantomConfig(shape=TINY)) for seed in range(6)}


@pytest.fixture(scope="module")
def clear_cases() -> dict[int, PhantomCase]:
    """difficulty 0: classic appearance; 2 malignant, 2 benign."""
    return {(seed, label): make_case(seed, PhantomConfig(shape=TINY, difficulty=0.0, label=label))
            for seed in (11, 12) for label in (0, 1)}


def test_default_grid_and_fov():
    case_grid = resolve_grid()
    assert case_grid.size == (360, 232, 120)
    np.testing.assert_allclose(case_grid.spacing, [1.0, 1.0, 1.2])
    np.testing.assert_allclose(case_grid.origin, [-179.5, -115.5, -71.4])  # centred on LPS (0, 0, 0)
    np.testing.assert_allclose(case_grid.centre, [0, 0, 0], atol=1e-9)
    tiny = resolve_grid(shape=TINY)  # same field of view
    np.testing.assert_allclose(tiny.spacing, [3.75, 3.625, 3.6])
    by_spacing = resolve_grid(spacing=(2.0, 2.0, 3.0))
    assert by_spacing.size == (180, 116, 48)


def test_deterministic_per_seed(tiny_cases):
    again = make_case(3, PhantomConfig(shape=TINY))
    for name in SERIES:
        np.testing.assert_array_equal(arr(again.images[name]), arr(tiny_cases[3].images[name]))
    np.testing.assert_array_equal(arr(again.lesion_mask), arr(tiny_cases[3].lesion_mask))
    assert again.truth == tiny_cases[3].truth
    assert not np.array_equal(arr(tiny_cases[3].images["pre"]), arr(tiny_cases[4].images["pre"]))


def test_series_types_and_tissue_contrast(tiny_cases):
    case = tiny_cases[0]
    tissue = arr(case.tissue)
    t1, pre = arr(case.images["t1"]).astype(float), arr(case.images["pre"]).astype(float)
    for name in SERIES:
        assert case.images[name].GetPixelID() == sitk.sitkInt16
    fat, fgt = tissue == TISSUE_LABELS["fat"], tissue == TISSUE_LABELS["fibroglandular"]
    assert np.median(t1[fat]) > 1.8 * np.median(t1[fgt])  # non-fat-suppressed: fat bright
    assert np.median(pre[fat]) < 0.6 * np.median(pre[fgt])  # fat-suppressed
    heart = tissue == TISSUE_LABELS["heart"]
    sub1 = arr(case.images["post_1"]).astype(float) - pre
    assert np.median(sub1[heart]) > 5 * np.median(sub1[fat])  # early, strong enhancement


def test_same_anatomy_in_flipped_and_permuted_storage(tiny_cases):
    """i -> -x, j -> +z, k -> +y: reoriented back to LPS it is the same image, noise included."""
    direction = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)
    cfg = PhantomConfig(shape=(96, 40, 64), spacing=(3.75, 3.6, 3.625), direction=direction)
    stored = make_case(2, cfg)
    reference = make_case(2, PhantomConfig(shape=TINY))
    assert stored.images["t1"].GetSize() == (96, 40, 64)
    np.testing.assert_allclose(stored.truth["center_lps"], reference.truth["center_lps"], atol=1e-3)
    for name in ["t1", "pre", "post_2"]:
        back = sitk.DICOMOrient(stored.images[name], "LPS")
        assert back.GetSize() == reference.images[name].GetSize()
        np.testing.assert_allclose(back.GetOrigin(), reference.images[name].GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(back.GetDirection(), np.eye(3).ravel())
        diff = np.abs(arr(back).astype(int) - arr(reference.images[name]).astype(int))
        assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3
    for mask in ("lesion_mask", "breast_mask"):
        back = arr(sitk.DICOMOrient(getattr(stored, mask), "LPS"))
        assert np.mean(back != arr(getattr(reference, mask))) < 1e-3


def test_oblique_grid_keeps_the_anatomy():
    """A grid rotated 20 degrees about z sees the same patient: same centre, lesion at the centre."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    case = make_case(7, PhantomConfig(shape=TINY, direction=direction, origin=None))
    reference = draw_parameters(7)
    assert case.truth["label"] == reference["label"]
    np.testing.assert_allclose(case.images["t1"].GetDirection(), direction)
    np.testing.assert_allclose(case.truth["center_lps"], make_case(7, PhantomConfig(shape=TINY)).truth["center_lps"],
                               atol=1e-3)
    index = case.lesion_mask.TransformPhysicalPointToIndex(case.truth["center_lps"])
    assert case.lesion_mask[index] == 1


def test_truth_consistency(tiny_cases):
    for seed, case in tiny_cases.items():
        truth = case.truth
        lesion, breast = arr(case.lesion_mask).astype(bool), arr(case.breast_mask).astype(bool)
        tissue = arr(case.tissue)
        assert case.lesion_mask.GetPixelID() == case.breast_mask.GetPixelID() == sitk.sitkUInt8
        # centre (LPS mm) inside the lesion mask, lesion inside the breast mask, in one breast
        index = case.lesion_mask.TransformPhysicalPointToIndex(truth["center_lps"])
        assert case.lesion_mask[index] == 1, seed
        assert breast[lesion].mean() > 0.97, seed
        xs = np.array([case.lesion_mask.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])[0]
                       for k, j, i in np.argwhere(lesion)])
        assert np.all(np.sign(xs) == (1 if truth["side"] == "left" else -1)), seed  # +x is patient Left
        # embedded in fibroglandular tissue: the voxels around it are mostly fibroglandular
        ring = arr(sitk.BinaryDilate(case.lesion_mask, [1, 1, 1])).astype(bool) & ~lesion
        around = tissue[ring]
        fgt = np.mean(around == TISSUE_LABELS["fibroglandular"])
        assert fgt > 0.5 * np.mean(np.isin(around, [TISSUE_LABELS["fat"], TISSUE_LABELS["fibroglandular"]])), seed
        assert 8.0 <= truth["diameter_mm"] <= 30.0
        # heart, lungs, chest wall and muscle are outside the breast mask; breasts are anterior to them
        for name in ("heart", "lung", "chest_wall"):
            assert not np.any(breast & (tissue == TISSUE_LABELS[name])), (seed, name)
        assert np.mean(breast & (tissue == TISSUE_LABELS["muscle"])) < 1e-4
        js_breast, js_heart = np.argwhere(breast)[:, 1], np.argwhere(tissue == TISSUE_LABELS["heart"])[:, 1]
        assert np.median(js_breast) < js_heart.min()  # j -> posterior
        # BI-RADS follows the appearance (suspicion)
        expected = 3 if truth["suspicion"] < 0.35 else (5 if truth["suspicion"] > 0.7 else 4)
        assert truth["birads"] == expected


def lesion_curve(case: PhantomCase) -> np.ndarray:
    """Mean relative enhancement (post_k - pre) / pre over the lesion mask, per phase."""
    lesion = arr(case.lesion_mask).astype(bool)
    pre = arr(case.images["pre"]).astype(float)[lesion].mean()
    return np.array([arr(case.images[f"post_{k}"]).astype(float)[lesion].mean() / pre - 1 for k in range(1, 7)])


def test_kinetics_and_appearance_follow_the_label(clear_cases):
    for (seed, label), case in clear_cases.items():
        curve = lesion_curve(case)
        truth = case.truth
        assert truth["label"] == label
        if label == 1:  # rapid wash-in, wash-out (type III)
            assert curve[0] > 0.6, (seed, curve)
            assert curve[-1] < 0.9 * curve[:2].max(), (seed, curve)
            assert (truth["kinetic_type"], truth["birads"]) == ("III", 5)
            assert truth["margin"] in ("irregular", "spiculated")
        else:  # slow, persistent (type I)
            assert curve[0] < 0.5, (seed, curve)
            assert np.all(np.diff(curve) > 0) and curve[-1] > 1.1 * curve[:2].max(), (seed, curve)
            assert (truth["kinetic_type"], truth["birads"], truth["margin"]) == ("I", 3, "circumscribed oval")
        assert kinetic_type(np.array(truth["enhancement_curve"])) == truth["kinetic_type"]


def test_difficulty_makes_the_classes_overlap():
    """The appearance (suspicion score) separates the classes perfectly at difficulty 0, not at the default."""
    def auc(difficulty: float) -> float:
        params = [draw_parameters(seed, PhantomConfig(difficulty=difficulty)) for seed in range(400)]
        return roc_auc_score([p["label"] for p in params], [p["lesion"]["suspicion"] for p in params])

    assert auc(0.0) == 1.0
    assert 0.88 < auc(DEFAULT_DIFFICULTY) < 0.98
    assert auc(1.0) < auc(DEFAULT_DIFFICULTY)
    labels = [draw_parameters(seed, PhantomConfig(malignant_fraction=0.25))["label"] for seed in range(400)]
    assert 0.18 < np.mean(labels) < 0.32


def test_write_case_geometry_round_trip(tmp_path):
    """Non-identity direction, anisotropic spacing, non-zero origin: every file as requested."""
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    direction = (c, 0.0, s, 0.0, -1.0, 0.0, s, 0.0, -c)  # oblique about y, j and k flipped
    cfg = PhantomConfig(shape=(80, 60, 30), spacing=(4.4, 3.9, 4.8), origin=(12.5, -30.0, 47.25), direction=direction)
    case = make_case(9, cfg)
    truth = write_case(case, tmp_path / "case", suffix=".nrrd")
    files = find_case_files(tmp_path / "case")
    assert files.kind == "phases" and [p.name for p in files.series] == [f"{n}.nrrd" for n in SERIES[1:]]
    assert json.loads((tmp_path / "case" / "case.json").read_text()) == truth
    assert truth["label"] == case.truth["label"] and truth["inputs"] == "phases"
    for name in [*SERIES, "truth/lesion_mask", "truth/breast_mask", "truth/tissue"]:
        image = sitk.ReadImage(str(tmp_path / "case" / f"{name}.nrrd"))
        assert image.GetSize() == (80, 60, 30)
        np.testing.assert_allclose(image.GetSpacing(), (4.4, 3.9, 4.8))
        np.testing.assert_allclose(image.GetOrigin(), (12.5, -30.0, 47.25))
        np.testing.assert_allclose(image.GetDirection(), direction, atol=1e-12)
        source = case.images.get(name) or {"truth/lesion_mask": case.lesion_mask, "truth/breast_mask": case.breast_mask,
                                           "truth/tissue": case.tissue}[name]
        np.testing.assert_array_equal(arr(image), arr(source))
    assert sitk.ReadImage(str(tmp_path / "case" / "truth/lesion_mask.nrrd")).GetPixelID() == sitk.sitkUInt8
    index = case.lesion_mask.TransformPhysicalPointToIndex(truth["center_lps"])
    assert case.lesion_mask[index] == 1


def test_subtraction_files_equal_post_minus_pre(tmp_path, tiny_cases):
    case = tiny_cases[1]
    write_case(case, tmp_path / "sub", inputs="subtractions", suffix=".nii.gz")
    files = find_case_files(tmp_path / "sub")
    assert files.kind == "subtractions" and len(files.series) == 6
    assert list(case.series("subtractions")) == ["t1"] + [f"sub_{k}" for k in range(1, 7)]
    assert list(case.series("phases")) == SERIES
    assert not (tmp_path / "sub" / "pre.nii.gz").exists()
    pre = arr(case.images["pre"]).astype(np.int32)
    for k, path in enumerate(files.series, start=1):
        sub = sitk.ReadImage(str(path))
        assert sub.GetPixelID() == sitk.sitkInt16
        np.testing.assert_array_equal(arr(sub), arr(case.images[f"post_{k}"]).astype(np.int32) - pre)
    np.testing.assert_allclose(read_volume(files.t1).GetSpacing(), (3.75, 3.625, 3.6), rtol=1e-6)


def test_fat_suppressed_t1_less_mode(tmp_path, tiny_cases):
    """``with_t1=False``: only the fat-suppressed series (fat darker than gland), read back without a T1."""
    case = tiny_cases[0]
    assert list(case.series("phases", with_t1=False)) == SERIES[1:]
    truth = write_case(case, tmp_path / "fs", with_t1=False)
    assert "t1.nrrd" not in truth["files"] and not (tmp_path / "fs" / "t1.nrrd").exists()
    files = find_case_files(tmp_path / "fs")
    assert files.t1 is None and files.kind == "phases" and [p.name for p in files.series] == [
        f"{n}.nrrd" for n in SERIES[1:]]
    tissue, pre = arr(case.tissue), arr(case.images["pre"])
    fat, gland = (np.median(pre[tissue == TISSUE_LABELS[n]]) for n in ("fat", "fibroglandular"))
    assert fat < 0.5 * gland


def test_synth_case_cli_function(tmp_path):
    truth = synth_case(tmp_path / "c", seed=4, label=1, shape=(48, 32, 20), spacing=(7.5, 7.25, 7.2))
    assert truth["label"] == 1 and truth["seed"] == 4 and truth["shape"] == [48, 32, 20]
    assert truth["phase_times_min"] == list(PHASE_TIMES_MIN) and truth["birads"] in (3, 4, 5)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        ["case.json", "times.json", "t1.nrrd", "pre.nrrd", "truth"] + [f"post_{k}.nrrd" for k in range(1, 7)])
    times = json.loads((tmp_path / "c" / "times.json").read_text())  # seconds after the injection
    assert times == {"post_s": [60 * t for t in PHASE_TIMES_MIN], "injection_s": 0.0}
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary folder left


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path, tiny_cases, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="already exists"):
        write_case(tiny_cases[0], tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]

    monkeypatch.setattr(sitk, "WriteImage", _failing_after(2))
    with pytest.raises(RuntimeError, match="disk full"):
        write_case(tiny_cases[0], tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # neither the case nor a temporary folder

    monkeypatch.undo()
    truth = write_case(tiny_cases[1], tmp_path / "full", overwrite=True)
    assert not (tmp_path / "full" / "keep.txt").exists()
    assert json.loads((tmp_path / "full" / "case.json").read_text())["seed"] == truth["seed"] == 1


def _failing_after(n_ok: int):
    """A stand-in for sitk.WriteImage that writes ``n_ok`` files, then fails like a full disk."""
    real = sitk.WriteImage
    calls = []

    def write(*args, **kwargs):
        calls.append(args)
        if len(calls) > n_ok:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    return write


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [({"spacing": (0.0, 1.0, 1.0)}, "--spacing"), ({"shape": (96, 2, 40)}, "--shape"),
     ({"difficulty": 1.5}, "difficulty"), ({"direction": (1.0, 1.0, 0, 0, 1, 0, 0, 0, 1)}, "direction"),
     ({"inputs": "both"}, "--inputs"), ({"suffix": ".png"}, "suffix"), ({"shape": (96, 64)}, "--shape"),
     ({"spacing": (1.0, 1.0)}, "--spacing")],
)
def test_bad_parameters_name_the_parameter(tmp_path, kwargs, source):
    with pytest.raises(InputError) as err:
        synth_case(tmp_path / "bad", seed=0, **kwargs)
    assert err.value.source == source
    assert not (tmp_path / "bad").exists()
