"""``breastcmsl kinetics`` (issue 28) on phantom case folders and synthetic DICOM studies: values against the phantom's
own voxels, phase times from every source, the study shapes met in practice, and bad inputs (one line, exit 2,
nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.cli import main
from BreastCMSLLib.dicom.seg import map_segmentation
from BreastCMSLLib.dicom.series import scan_study
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case, write_case
from Testing import dicomsynth

from .conftest import TINY_SHAPE

POSTS = [f"post_{k}" for k in range(1, 7)]
KEYS = {"times_s", "early_phase", "late_phase", "ftv_ml", "ser_volumes_ml", "pe_threshold", "background", "point"}


@pytest.fixture(scope="module")
def phantom():
    """A malignant washout (type III) lesion in the right breast."""
    case = make_case(6, PhantomConfig(shape=TINY_SHAPE, label=1))
    assert case.truth["kinetic_type"] == "III" and case.truth["side"] == "right"
    return case


@pytest.fixture(scope="module")
def case_dir(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("kin") / "case"
    write_case(phantom, out)
    return out


def centre_of(phantom) -> tuple[list[float], tuple[int, int, int]]:
    """The lesion centre (LPS mm) and its voxel (K, J, I) in the phantom's grid."""
    lps = phantom.truth["center_lps"]
    i, j, k = phantom.images["pre"].TransformPhysicalPointToIndex(lps)
    return lps, (k, j, i)


def values(phantom, name: str) -> np.ndarray:
    return sitk.GetArrayFromImage(phantom.images[name]).astype(np.float64)


def box_around(lps, half=15.0) -> list[str]:
    return [str(v) for v in (*(np.asarray(lps) - half), *(np.asarray(lps) + half))]


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_case_folder_against_the_phantom_voxels(phantom, case_dir, tmp_path, capsys):
    lps, c = centre_of(phantom)
    out = tmp_path / "out"
    code, _, err = run(["kinetics", case_dir, "--point", *lps, "--roi-box", *box_around(lps), "--out", out], capsys)
    assert code == 0, err
    report = json.loads((out / "kinetics.json").read_text())
    assert set(report) >= KEYS
    assert report["times_s"] == [75.0, 150.0, 225.0, 300.0, 375.0, 450.0]  # times.json written by synth
    assert report["early_phase"] == {"post": 2, "time_s": 150.0}
    assert report["late_phase"] == {"post": 6, "time_s": 450.0}
    pre, early, late = values(phantom, "pre")[c], values(phantom, "post_2")[c], values(phantom, "post_6")[c]
    pe = sitk.ReadImage(str(out / "pe_early.nrrd"))
    assert pe.GetSize() == phantom.images["post_1"].GetSize() and pe.GetOrigin() == phantom.images["post_1"].GetOrigin()
    assert sitk.GetArrayViewFromImage(pe)[c] == pytest.approx(100 * (early - pre) / pre, rel=1e-5)
    ser = sitk.GetArrayViewFromImage(sitk.ReadImage(str(out / "ser.nrrd")))[c]
    assert ser == pytest.approx((early - pre) / (late - pre), rel=1e-5)
    assert sitk.GetArrayViewFromImage(sitk.ReadImage(str(out / "ser_label.nrrd")))[c] == (3 if ser > 1.1 else 2)
    # radius 2 mm is below the voxel size: the curve is the centre voxel's own
    point = report["point"]
    expected = [100 * (values(phantom, p)[c] - pre) / pre for p in POSTS]
    np.testing.assert_allclose(point["curve_percent"], expected, atol=0.01)
    assert point["delayed"] == "washout" and point["initial"] == "fast"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ftv_label.nrrd")))
    voxel_ml = float(np.prod(pe.GetSpacing())) / 1000
    assert report["ftv_ml"] == pytest.approx((label > 0).sum() * voxel_ml, abs=1e-3) and report["ftv_ml"] > 1.0
    assert sum(report["ser_volumes_ml"].values()) == pytest.approx(report["ftv_ml"], abs=1e-3)
    assert report["ser_volumes_ml"]["washout"] == pytest.approx((label == 3).sum() * voxel_ml, abs=1e-3)


def test_times_from_the_command_line_and_without_times(phantom, case_dir, tmp_path, capsys):
    lps, _ = centre_of(phantom)
    out = tmp_path / "given"
    code, _, err = run(["kinetics", case_dir, "--point", *lps, "--times", 60, 120, 180, 240, 300, 360,
                        "--injection-s", 0, "--early-s", 100, "--late-s", 350, "--out", out], capsys)
    assert code == 0, err
    report = json.loads((out / "kinetics.json").read_text())
    assert report["times_s"] == [60, 120, 180, 240, 300, 360] and report["times_source"] == "--times"
    assert report["early_phase"]["post"] == 2 and report["late_phase"]["post"] == 6  # 120 s and 360 s
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in case_dir.iterdir():
        if f.suffix == ".nrrd":
            (bare / f.name).symlink_to(f)
    code, _, err = run(["kinetics", bare, "--out", tmp_path / "none"], capsys)
    assert code == 2 and "without acquisition times" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


def _mask_file(phantom, path, fill: bool, origin_shift=(0.0, 0.0, 0.0)):
    mask = sitk.Image(phantom.images["pre"].GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(phantom.images["pre"])
    if fill:
        mask = mask + 1
    mask.SetOrigin(tuple(np.add(mask.GetOrigin(), origin_shift)))
    sitk.WriteImage(mask, str(path))
    return path


@pytest.mark.parametrize("bad", ["box_outside", "mask_empty", "mask_outside", "point_outside_breast",
                                 "no_enhancement", "subtractions", "both_inputs"])
def test_bad_inputs_one_line_exit_2_nothing_written(bad, phantom, case_dir, tmp_path, capsys):
    lps, _ = centre_of(phantom)
    out = tmp_path / "out"
    base = ["kinetics", case_dir, "--out", out]
    argv, named, problem = {
        "box_outside": ([*base, "--roi-box", 900, 900, 900, 950, 950, 950], "--roi-box", "outside the volume"),
        "mask_empty": ([*base, "--roi-mask", _mask_file(phantom, tmp_path / "e.nrrd", False)], "e.nrrd", "empty"),
        "mask_outside": ([*base, "--roi-mask", _mask_file(phantom, tmp_path / "o.nrrd", True, (900, 0, 0))],
                         "o.nrrd", "outside the volume"),
        "point_outside_breast": ([*base, "--point", 0.0, 60.0, 0.0], "--point", "outside the breast"),
        "no_enhancement": ([*base, "--roi-box", *box_around(lps), "--pe-threshold", 1e6], "--roi-box",
                           "no voxel of the region enhances"),
        "subtractions": (["kinetics", tmp_path / "subs", "--out", out], "sub_1", "subtractions only"),
        "both_inputs": ([*base, "--dicom", case_dir], "kinetics", "one of them"),
    }[bad]
    if bad == "subtractions":
        write_case(phantom, tmp_path / "subs", inputs="subtractions")
    code, stdout, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and named in lines[0] and problem in lines[0], err
    assert not out.exists() and not stdout


# ----------------------------------------------------------------------------------------------- DICOM
def test_dicom_interleaved_phases_take_their_trigger_times(phantom, tmp_path, capsys):
    """GE style: pre and six posts interleaved in one series with one AcquisitionTime and TriggerTime 0, 75, ...:
    seconds from the first post-contrast phase are 0, 75, ..., 375; the early phase nearest 150 s is post 3."""
    images = phantom.images
    dicomsynth.write_study(tmp_path / "ge", "ge", images["t1"], images["pre"], [images[p] for p in POSTS])
    lps, c = centre_of(phantom)
    out = tmp_path / "out"
    code, _, err = run(["kinetics", "--dicom", tmp_path / "ge", "--point", *lps, "--out", out], capsys)
    assert code == 0, err
    report = json.loads((out / "kinetics.json").read_text())
    assert report["times_s"] == [0.0, 75.0, 150.0, 225.0, 300.0, 375.0]
    assert report["early_phase"]["post"] == 3 and report["late_phase"]["post"] == 6
    pre, early = values(phantom, "pre")[c], values(phantom, "post_3")[c]
    pe = sitk.GetArrayViewFromImage(sitk.ReadImage(str(out / "pe_early.nrrd")))[c]
    assert pe == pytest.approx(100 * (early - pre) / pre, rel=1e-4)
    assert [r["role"] for r in report["inputs"]["dicom"]["roles"]][:3] == ["t1", "pre", "post_1"]


def sagittal_right(image: sitk.Image) -> sitk.Image:
    """The phantom's right breast (patient-right half) as a sagittal series (i -> P, j -> I, k -> R); voxels moved,
    never interpolated."""
    half = image[: image.GetSize()[0] // 2, :, :]
    return sitk.Flip(sitk.PermuteAxes(half, [1, 2, 0]), [False, True, True])


def test_sagittal_two_phase_study_with_vendor_pe_ser_and_an_off_grid_seg(phantom, tmp_path, capsys):
    """A sagittal single-breast study with two post-contrast phases and the scanner's PE and SER series beside it
    (never inputs): early = post 1, late = post 2. A DICOM SEG of the lesion made on a grid half a voxel off the
    slices maps onto the nearest slices: as many region voxels as the truth mask, and the same FTV within 15 %."""
    volumes = [sagittal_right(phantom.images[p]) for p in ("pre", "post_1", "post_2")]
    derived = ("DERIVED", "SECONDARY", "OTHER")
    study = tmp_path / "study"
    dicomsynth.write_specs(study, [
        dicomsynth.SeriesSpec("Sag 3D SPGR dynamic", volumes, [60.9, 135.0, 210.0], scan_options="FAST_GEMS\\FS",
                              slice_time_s=0.02, whole_seconds=True),
        dicomsynth.SeriesSpec("Sag 3D SPGR dynamic: PE1", [volumes[1]], [300.0], image_type=derived),
        dicomsynth.SeriesSpec("Sag 3D SPGR dynamic: SER", [volumes[2]], [300.0], image_type=derived)])
    lesion = sagittal_right(phantom.lesion_mask)
    truth_file = tmp_path / "lesion.nrrd"
    sitk.WriteImage(lesion, str(truth_file))
    shifted = sitk.Image(lesion)
    spacing_k = lesion.GetSpacing()[2]
    normal = np.reshape(lesion.GetDirection(), (3, 3))[:, 2]
    shifted.SetOrigin(tuple(np.add(lesion.GetOrigin(), 0.5 * spacing_k * normal)))
    other = tmp_path / "shifted"
    dicomsynth.write_specs(other, [dicomsynth.SeriesSpec("shifted", [sitk.Cast(shifted, sitk.sitkInt16)], [0.0])])
    (series,) = scan_study(other)
    seg_file = tmp_path / "lesion_seg.dcm"
    map_segmentation(shifted, series.phases[0], series_number=900).save_as(seg_file)

    lps, c = centre_of(phantom)
    reports = {}
    for name, mask in (("truth", truth_file), ("seg", seg_file)):
        out = tmp_path / name
        code, _, err = run(["kinetics", "--dicom", study, "--roi-mask", mask, "--point", *lps, "--out", out], capsys)
        assert code == 0, err
        reports[name] = json.loads((out / "kinetics.json").read_text())
    truth, seg = reports["truth"], reports["seg"]
    assert truth["early_phase"]["post"] == 1 and truth["late_phase"]["post"] == 2
    assert truth["times_s"] == [0.0, 75.0]
    assert [r["series_number"] for r in truth["inputs"]["dicom"]["roles"]] == [100, 100, 100]
    assert seg["region_voxels"] == truth["region_voxels"] == int(sitk.GetArrayViewFromImage(lesion).sum())
    assert seg["ftv_ml"] == pytest.approx(truth["ftv_ml"], rel=0.15) and truth["ftv_ml"] > 0
    pre, e1, e2 = (values(phantom, p)[c] for p in ("pre", "post_1", "post_2"))
    change = ((e2 - pre) - (e1 - pre)) / (e1 - pre)  # the early phase is post 1, the late post 2
    assert truth["point"]["delayed_change_percent"] == pytest.approx(100 * change, abs=0.01)
    assert truth["point"]["delayed"] == ("persistent" if change > 0.1 else "washout" if change < -0.1 else "plateau")
    pe = sitk.ReadImage(str(tmp_path / "truth" / "pe_early.nrrd"))
    np.testing.assert_allclose(pe.GetDirection(), np.reshape(volumes[0].GetDirection(), -1), atol=1e-6)


@pytest.mark.parametrize("tags", ["trigger", "temporal_resolution", "none"])
def test_dicom_times_without_clock_times(tags, phantom, tmp_path):
    """Phases in one series without AcquisitionTime or ContentTime: TriggerTime orders them (0, 75, 150, 225 s
    from the pre-contrast phase); without it, TemporalPositionIdentifier x TemporalResolution (60 s); with neither,
    the times are unknown."""
    from BreastCMSLLib.dicom.series import read_dataset
    from BreastCMSLLib.dicom.study import load_study
    from BreastCMSLLib.dicom.times import study_times

    volumes = [phantom.images[p] for p in ("pre", "post_1", "post_2", "post_3")]
    spec = dicomsynth.SeriesSpec("Ax dyn multiphase", volumes, [60.0, 135.0, 210.0, 285.0], temporal_tags=True,
                                 time_tags="none", scan_options="FS")
    files = dicomsynth.write_specs(tmp_path, [spec])["Ax dyn multiphase"]
    for path in files if tags != "trigger" else []:
        ds = read_dataset(path)
        del ds.TriggerTime
        if tags == "temporal_resolution":
            ds.TemporalResolution = 60000.0  # ms
        else:
            del ds.TemporalPositionIdentifier
        ds.save_as(path)
    if tags == "none":  # the phases are then split by instance number only
        assert study_times(load_study(tmp_path).assignment, "study").post_s is None
        return
    times = study_times(load_study(tmp_path).assignment, "study")
    assert times.post_s == ((0.0, 75.0, 150.0) if tags == "trigger" else (0.0, 60.0, 120.0))
