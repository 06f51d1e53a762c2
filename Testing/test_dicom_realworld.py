"""Studies as they come off scanners (issue 11): phase splitting by slice position, no T1, derived and
non-image objects beside the series, inventory on failure, malformed ROLES.json, a sagittal unilateral
GE-style study analyzed end to end."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from BreastCMSLLib.cli import main
from BreastCMSLLib.dicom.seg import map_segmentation
from BreastCMSLLib.dicom.series import read_dataset, read_phase, scan_study
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case, write_case
from Testing import dicomsynth

from .conftest import TINY_SHAPE, run_cli

POSTS = [f"post_{k}" for k in range(1, 7)]
PHASES = ["pre", *POSTS]


@pytest.fixture(scope="module")
def phantom():
    return make_case(3, PhantomConfig(shape=TINY_SHAPE, label=1))


SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # i -> P, j -> I, k -> R (= row x column)


def sagittal_unilateral(image: sitk.Image) -> sitk.Image:
    """The phantom's left breast (patient-left half) stored as a sagittal series: i -> P, j -> I, k -> R.
    Voxels are moved, never interpolated: the same physical points keep the same values."""
    half = image[image.GetSize()[0] // 2:, :, :]
    return sitk.Flip(sitk.PermuteAxes(half, [1, 2, 0]), [False, True, True])


def ge_sagittal_spec(volumes: list[sitk.Image], time_tags: str = "acquisition", **kw) -> dicomsynth.SeriesSpec:
    """One GE-style multi-phase series as the 2002-era TCIA studies hold it: no TemporalPositionIdentifier or
    TriggerTime, whole-second times, the first phase crossing a second boundary (60.9 s + 0.02 s per
    slice), AcquisitionNumber 1, 2, 2, ..., InstanceNumber running phase after phase, FS in ScanOptions."""
    times = [60.9] + [60.0 + 75.0 * k for k in range(1, len(volumes))]
    return dicomsynth.SeriesSpec("Sag 3D SPGR dynamic", volumes, times, scan_options="FAST_GEMS\\FS",
                                 time_tags=time_tags, slice_time_s=0.02, whole_seconds=True,
                                 acquisition_numbers=(1, *[2] * (len(volumes) - 1)), **kw)


# ------------------------------------------------------------------------------------ 1. phase splitting
@pytest.mark.parametrize(("time_tags", "split_by"), [("acquisition", "acquisition_time"),
                                                     ("content", "content_time"), ("none", "instance")])
def test_multiphase_split_by_position(time_tags, split_by, phantom, tmp_path):
    volumes = [sagittal_unilateral(phantom.images[p]) for p in ("pre", "post_1", "post_2")]
    dicomsynth.write_specs(tmp_path, [ge_sagittal_spec(volumes, time_tags)])
    (series,) = scan_study(tmp_path)
    assert series.problem is None and series.split_by == split_by and series.plane == "sagittal"
    assert [len(p.frames) for p in series.phases] == [volumes[0].GetSize()[2]] * 3
    if time_tags == "acquisition":  # the first phase's images carry two clock seconds, as on the scanner
        first = {read_dataset(f.path, stop_before_pixels=True).AcquisitionTime for f in series.phases[0].frames}
        assert first == {"080100", "080101"}
    if time_tags != "none":  # a phase's time is its earliest: the whole seconds, 08:01:00, 08:02:15, 08:03:30
        assert [p.time_s - 8 * 3600 for p in series.phases] == [60.0, 135.0, 210.0]
    for phase, volume in zip(series.phases, volumes, strict=True):
        image = read_phase(phase)
        np.testing.assert_allclose(image.GetDirection(), SAGITTAL, atol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), volume.GetOrigin(), atol=1e-4)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(volume))


def test_siemens_one_series_per_phase_unchanged(phantom, tmp_path):
    images = phantom.images
    dicomsynth.write_study(tmp_path, "siemens", images["t1"], images["pre"], [images[p] for p in POSTS])
    dynamic = [s for s in scan_study(tmp_path) if s.description == "t1_fl3d_tra_dynaVIEWS_spair"]
    assert len(dynamic) == 7 and all(len(s.phases) == 1 and s.split_by is None for s in dynamic)
    assert [s.phases[0].time_s - 8 * 3600 for s in dynamic] == [60.0 + 75.0 * k for k in range(7)]


def test_overlapping_phase_times_are_a_listed_problem(phantom, tmp_path, capsys):
    """Phases 1 s apart whose slices take 0.1 s each: the split phases' time ranges overlap."""
    volumes = [phantom.images[p] for p in ("pre", "post_1")]
    spec = dicomsynth.SeriesSpec("ax dyn", volumes, [60.0, 61.0], slice_time_s=0.1)
    dicomsynth.write_specs(tmp_path, [spec])
    (series,) = scan_study(tmp_path)
    assert not series.phases and "acquisition times overlap" in series.problem
    assert "phase 1 ends at" in series.problem and "phase 2 starts at" in series.problem
    assert main(["roles", str(tmp_path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["series"][0]["problem"] == series.problem and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- 5. derived and non-image objects
def _plain_object(folder, sop_class: str, modality: str, number: int, description: str) -> None:
    """A header-only DICOM object of another kind (SR, PR) in the study folder."""
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = generate_uid(), number, description
    ds.Modality, ds.PatientID, ds.StudyInstanceUID = modality, "PHANTOM", generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True)
    ds.save_as(folder / "obj.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def gathered(phantom, tmp_path_factory):
    """A T1-less GE-style sagittal unilateral study (series 100) with what sits beside it on real exports:
    PE1 and SER maps (DERIVED\\SECONDARY), a localizer, a secondary capture, a SEG of the breast, an SR, a PR."""
    study = tmp_path_factory.mktemp("gathered")
    volumes = [sagittal_unilateral(phantom.images[p]) for p in PHASES]
    pre = volumes[0]
    derived = ("DERIVED", "SECONDARY", "OTHER")
    dicomsynth.write_specs(study, [
        ge_sagittal_spec(volumes),
        dicomsynth.SeriesSpec("Sag 3D SPGR dynamic: PE1", [pre], [300.0], image_type=derived),
        dicomsynth.SeriesSpec("Sag 3D SPGR dynamic: SER", [pre], [300.0], image_type=derived),
        dicomsynth.SeriesSpec("Scout", [pre], [0.0], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        dicomsynth.SeriesSpec("Screen Save", [pre], [400.0], sop_class=SecondaryCaptureImageStorage)])
    dynamic = next(s for s in scan_study(study) if s.number == 100)
    truth = sagittal_unilateral(phantom.breast_mask)
    map_segmentation(truth, dynamic.phases[0], series_number=600).save_as(study / "seg.dcm")
    _plain_object(study / "sr", BasicTextSRStorage, "SR", 700, "breast VOI report")
    _plain_object(study / "pr", GrayscaleSoftcopyPresentationStateStorage, "PR", 800, "key images")
    return study


EXCLUDED = {200: "DERIVED\\SECONDARY", 300: "DERIVED\\SECONDARY", 400: "ImageType LOCALIZER",
            500: "SOP class Secondary Capture Image Storage", 600: "SOP class Segmentation Storage",
            700: "SOP class Basic Text SR Storage", 800: "SOP class Grayscale Softcopy Presentation State Storage"}


def test_derived_and_non_image_objects_never_take_a_role(gathered, capsys):
    assert main(["roles", str(gathered), "--json", "--channels", "6"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [(r["role"], r["series_number"], r["phase"]) for r in table["roles"]] == [
        ("pre", 100, 1), *[(f"post_{k}", 100, k + 1) for k in range(1, 7)]]
    assert table["mask_source"] == "pre"
    listed = {s["series_number"]: s for s in table["series"]}
    assert sorted(listed) == [100, 200, 300, 400, 500, 600, 700, 800]
    assert listed[100]["excluded"] is None and listed[100]["phases"] == 7
    for number, reason in EXCLUDED.items():
        assert reason in listed[number]["excluded"], listed[number]
        assert listed[number]["phases"] == 0


def test_roles_table_prints_mask_source(gathered):
    proc = run_cli("roles", gathered)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].split()[:3] == ["pre", "100", "1/7"]
    assert lines[-1] == "breast mask from the fat-suppressed pre-contrast phase (no T1) (mask_source pre)"


# ------------------------------------------------------------------------ 3. inventory on failure
def test_inventory_on_failure(gathered, tmp_path, capsys):
    """Roles that cannot be filled (the model wants 4 channels, the study has 6 posts): the series table on
    stdout, the one-line error on stderr, exit 2; --json prints the same inventory as JSON."""
    assert main(["roles", str(gathered), "--channels", "4"]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "expected 4 post-contrast phases" in err
    rows = out.splitlines()
    assert rows[0].split() == ["series", "description", "image_type", "phases", "orientation", "problem"]
    assert len(rows) == 9
    assert rows[1].startswith("100") and "Sag 3D SPGR dynamic" in rows[1] and "sagittal" in rows[1]
    assert "excluded: SOP class Segmentation Storage" in rows[6]
    assert main(["roles", str(gathered), "--channels", "4", "--json"]) == 2
    out, err = capsys.readouterr()
    inventory = json.loads(out)
    assert inventory["error"] == err.strip().removeprefix("breastcmsl roles: error: ")
    assert [s["series_number"] for s in inventory["series"]] == [100, 200, 300, 400, 500, 600, 700, 800]
    assert inventory["series"][0]["phases"] == 7 and inventory["series"][0]["orientation"] == "sagittal"


# ---------------------------------------------------------------------- 4. malformed ROLES.json
BAD_ROLES = [
    ({"t1": "100:1", "pre": "100:1"}, "pre: names 100:1", "already named for t1"),
    ({"pre": "100:9"}, "pre: names phase '100:9'", "series 100 has 7 phase(s)"),
    ({"pre": "100:x"}, "pre: names phase '100:x'", "has 7 phase(s)"),
    ({"post": [4711]}, "post: names series '4711'", "matches 0 series"),
    ({"pre": "1.2.826.0.1.3680043.99.1"}, "pre: names series '1.2.826.0.1.3680043.99.1'", "matches 0 series"),
    ({"pre": "200"}, "pre: names series '200'", "never takes a role (ImageType DERIVED\\SECONDARY"),
    ({"t1": 600}, "t1: names series '600'", "never takes a role (SOP class Segmentation Storage"),
    ({"post": ["100:2", "100:2", "100:3", "100:4", "100:5", "100:6"]}, "post: names 100:2",
     "already named for post"),
    ({"t1": "100"}, "t1: must name one volume", "names 7"),
    ({"pre": "100:1", "sub": ["100:2"]}, "roles.json", "give either sub or pre/post roles"),
    ({"t1": True}, "t1: expected a series id", "roles.json"),
]


@pytest.mark.parametrize(("roles", "key", "problem"), BAD_ROLES, ids=[str(i) for i in range(len(BAD_ROLES))])
def test_malformed_roles_never_crash(roles, key, problem, gathered, tiny_model_path, tmp_path, capsys):
    path = tmp_path / "roles.json"
    path.write_text(json.dumps(roles))
    out = tmp_path / "out"
    for argv in (["roles", str(gathered), "--roles", str(path), "--channels", "6"],
                 ["analyze", "--dicom", str(gathered), "--roles", str(path), "--model", str(tiny_model_path),
                  "--out", str(out)]):
        assert main(argv) == 2, argv  # an exception other than a user error would fail the test here
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and key in err and problem in err, err
        assert str(path) in err, err  # the ROLES.json is the file named
        assert not out.exists()


def test_malformed_roles_no_traceback_in_a_real_process(gathered, tmp_path):
    path = tmp_path / "roles.json"
    path.write_text(json.dumps({"t1": "100:1", "pre": "100:1"}))  # the IndexError of the issue
    proc = run_cli("roles", gathered, "--roles", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("breastcmsl roles: error: ")
    assert "already named for t1" in proc.stderr


# ------------------------------------------------- 2 + 6. T1-less and sagittal studies analyze end to end
def test_sagittal_unilateral_study_analyzes(gathered, phantom, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", "--dicom", str(gathered), "--model", str(tiny_model_path), "--out", str(out),
                 "--dicom-seg"]) == 0
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result["mask_source"] == "pre" and result["inputs"]["t1"] is None
    roles = result["inputs"]["dicom"]["roles"]
    assert [r["role"] for r in roles] == PHASES
    reference = roles[1]
    assert (reference["series_number"], reference["phase"], reference["orientation"]) == (100, 2, "sagittal")
    dynamic = next(s for s in scan_study(gathered) if s.number == 100)
    ref_image = read_phase(dynamic.phases[1])
    expected = sagittal_unilateral(phantom.images["post_1"])
    for name in ("coam", "cam", "coam_label", "cam_label"):  # every map on the reference series' own grid
        image = sitk.ReadImage(str(out / f"{name}.nrrd"))
        assert image.GetSize() == ref_image.GetSize() == expected.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), ref_image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), ref_image.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), SAGITTAL, atol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    assert result["reference_geometry"]["size"] == list(ref_image.GetSize())
    seg = hd.seg.segread(out / "coam_seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dynamic.uid
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    files = {f.path for f in dynamic.phases[1].frames}
    assert referenced == {str(read_dataset(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert len(referenced) == ref_image.GetSize()[2]
    label = sitk.ReadImage(str(out / "coam_label.nrrd"))
    assert int(seg.NumberOfFrames) == label.GetSize()[2]


@pytest.fixture(scope="module")
def t1_less_case(phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("t1less") / "case"
    write_case(phantom, folder, with_t1=False)
    return folder


def test_t1_less_case_folder_and_dicom_agree(t1_less_case, phantom, tiny_model_path, tmp_path, capsys):
    """A T1-less phantom analyzes from its case folder, from --pre/--post without --t1, and from DICOM
    (GE style without the T1 series), with the same result."""
    assert not (t1_less_case / "t1.nrrd").exists()
    results = {}
    study = tmp_path / "study"
    dicomsynth.write_study(study, "ge", None, phantom.images["pre"], [phantom.images[p] for p in POSTS])
    for name, args in {"folder": [str(t1_less_case)],
                       "named": ["--pre", str(t1_less_case / "pre.nrrd"), "--post",
                                 *[str(t1_less_case / f"{p}.nrrd") for p in POSTS]],
                       "dicom": ["--dicom", str(study)]}.items():
        out = tmp_path / name
        assert main(["analyze", *args, "--model", str(tiny_model_path), "--out", str(out)]) == 0, name
        results[name] = json.loads((out / "result.json").read_text())
    capsys.readouterr()
    for name, result in results.items():
        assert result["mask_source"] == "pre" and result["inputs"]["t1"] is None, name
        assert result["probability"] == pytest.approx(results["folder"]["probability"], abs=1e-4), name
        np.testing.assert_allclose(result["coam_peak_lps"], results["folder"]["coam_peak_lps"], atol=1e-4)


def test_case_with_t1_reports_t1_mask(tiny_case, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", str(tiny_case), "--model", str(tiny_model_path), "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads((out / "result.json").read_text())["mask_source"] == "t1"


def test_subtractions_without_t1_are_refused(phantom, tiny_model_path, tmp_path, capsys):
    case = tmp_path / "case"
    write_case(phantom, case, inputs="subtractions", with_t1=False)
    out = tmp_path / "out"
    assert main(["analyze", str(case), "--model", str(tiny_model_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sub_1" in err and "subtractions without a T1" in err
    assert not out.exists()
