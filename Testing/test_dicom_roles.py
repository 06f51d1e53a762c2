"""DICOM studies in vendor layouts: series scan, role assignment, ambiguity errors and --roles, geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.cli import main
from BreastCMSLLib.dicom.roles import RolePatterns, assign_roles
from BreastCMSLLib.dicom.series import read_phase, scan_study
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case
from Testing import dicomsynth

from .conftest import run_cli

POSTS = [f"post_{k}" for k in range(1, 7)]
# series numbers are 100, 200, ... in the order each style writes them (see dicomsynth.style_series)
EXPECTED = {
    "siemens": ("phases", ["t1", "pre", *POSTS], [(100, 1), (200, 1), *[(300 + 100 * k, 1) for k in range(6)]]),
    "ge": ("phases", ["t1", "pre", *POSTS], [(100, 1), *[(200, k) for k in range(1, 8)]]),
    "philips": ("subtractions", ["t1", *[f"sub_{k}" for k in range(1, 7)]],
                [(100, 1), *[(200 + 100 * k, 1) for k in range(6)]]),
    "duke": ("phases", ["t1", "pre", *POSTS], [(100, 1), (200, 1), *[(300 + 100 * k, 1) for k in range(6)]]),
}
# an oblique, anisotropic grid with a non-zero origin (rotated 20 degrees about the S axis)
ROTATION = (0.9396926, -0.3420201, 0.0, 0.3420201, 0.9396926, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def phantom():
    """A small phantom on an oblique grid (its volumes are what every study below stores)."""
    cfg = PhantomConfig(shape=(48, 36, 16), spacing=(5.0, 5.5, 6.0), origin=(-110.0, -95.0, -40.0),
                        direction=ROTATION, label=1)
    return make_case(3, cfg)


def write(folder, style, phantom, extra=()):
    images = phantom.images
    dicomsynth.write_study(folder, style, images["t1"], images["pre"], [images[p] for p in POSTS], extra=list(extra))
    return folder


@pytest.fixture(scope="module")
def studies(phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    return {style: write(root / style, style, phantom) for style in dicomsynth.STYLES}


def roles_json(capsys, *args) -> tuple[int, dict | str]:
    code = main(["roles", *map(str, args)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err.strip())


@pytest.mark.parametrize("style", dicomsynth.STYLES)
def test_roles_every_style(style, studies, capsys):
    code, table = roles_json(capsys, studies[style], "--json", "--channels", "6")
    assert code == 0
    kind, names, ids = EXPECTED[style]
    assert table["kind"] == kind
    assert [r["role"] for r in table["roles"]] == names
    assert [(r["series_number"], r["phase"]) for r in table["roles"]] == ids
    assert all(r["reason"] and r["confidence"] in ("high", "medium") for r in table["roles"])
    times = [r["time_s"] for r in table["roles"][1:]]
    assert times == sorted(times)


def test_roles_table_cli(studies):
    proc = run_cli("roles", studies["ge"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["role", "series", "phase", "description"]
    assert lines[2].split()[:3] == ["pre", "200", "1/7"]
    assert lines[8].split()[:3] == ["post_6", "200", "7/7"]
    assert "Ax Vibrant MultiPhase" in lines[8] and "earliest dynamic phase" in lines[2]


def test_scan_tags_and_phase_split(studies, phantom, tmp_path):
    ge = {s.number: s for s in scan_study(studies["ge"])}
    multi = ge[200]
    assert multi.split_by == "temporal_position" and multi.number_of_temporal_positions == 7
    assert [len(p.frames) for p in multi.phases] == [16] * 7
    # GE stores one AcquisitionTime for all phases: trigger time orders them, 75 s apart
    assert np.diff([p.time_s for p in multi.phases]) == pytest.approx([75.0] * 6)
    assert "FS" in multi.scan_options.split("\\") and ge[100].plane == "axial"
    assert ge[300].problem == "mixes 3 slice orientations" and not ge[300].phases  # the 3-plane localizer
    # a Siemens-like multi-phase series without temporal tags: split by AcquisitionTime
    images = phantom.images
    spec = dicomsynth.SeriesSpec("t1_fl3d_tra_dyn", [images[p] for p in ("pre", "post_1", "post_2")],
                                 [60.0, 135.0, 210.0])
    dicomsynth.write_specs(tmp_path, [spec])
    (series,) = scan_study(tmp_path)
    assert series.split_by == "acquisition_time" and [p.time_s - 28800 for p in series.phases] == [60, 135, 210]
    assert sitk.GetArrayFromImage(read_phase(series.phases[2])).tolist() == sitk.GetArrayFromImage(
        sitk.Cast(images["post_2"], sitk.sitkFloat32)).tolist()
    # all dynamic phases in one enhanced multi-frame file (as Philips exports them)
    enhanced = tmp_path / "enhanced"
    dicomsynth.write_specs(enhanced, [
        dicomsynth.SeriesSpec("T1W_TSE_tra", [images["t1"]], [0.0]),
        dicomsynth.SeriesSpec("Dyn_eTHRIVE", [images[p] for p in ("pre", *POSTS)],
                              [60.0 + 75.0 * i for i in range(7)], enhanced=True)])
    assignment = assign_roles(scan_study(enhanced), n_channels=6)
    assert [(e.role, e.phase.series.number, e.phase.index) for e in assignment.entries] == [
        ("t1", 100, 1), ("pre", 200, 1), *[(f"post_{k}", 200, k + 1) for k in range(1, 7)]]
    assert assignment.entries[1].phase.series.split_by == "acquisition_time"
    post_2 = read_phase(assignment.entries[3].phase)
    np.testing.assert_allclose(post_2.GetOrigin(), images["post_2"].GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(post_2.GetDirection(), images["post_2"].GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(post_2), sitk.GetArrayFromImage(images["post_2"]))
    philips = {s.number: s for s in scan_study(studies["philips"])}
    assert philips[200].image_type[:3] == ("DERIVED", "PRIMARY", "SUBTRACTION")
    assert all(f.path.name.endswith(".dcm.gz") for f in philips[200].phases[0].frames)
    assert philips[100].phases[0].frames[0].frame == 1  # the enhanced multi-frame T1


@pytest.mark.parametrize("style", dicomsynth.STYLES)
def test_volumes_have_phantom_geometry(style, studies, phantom):
    series = scan_study(studies[style])
    assignment = assign_roles(series, n_channels=6)
    expected = {"t1": phantom.images["t1"], "pre": phantom.images["pre"], **{p: phantom.images[p] for p in POSTS}}
    assert len(assignment.entries) == (7 if style == "philips" else 8)
    for entry in assignment.entries:
        role = entry.role if entry.role in expected else f"post_{entry.role.split('_')[1]}"
        image, stored = read_phase(entry.phase), expected[role]
        assert image.GetSize() == stored.GetSize(), entry.role
        np.testing.assert_allclose(image.GetOrigin(), stored.GetOrigin(), atol=1e-4, err_msg=entry.role)
        np.testing.assert_allclose(image.GetSpacing(), stored.GetSpacing(), atol=1e-4, err_msg=entry.role)
        np.testing.assert_allclose(image.GetDirection(), stored.GetDirection(), atol=1e-6, err_msg=entry.role)
        # every voxel centre where the phantom has it, to 1e-4 mm (the far corner adds up spacing and direction)
        corner = [n - 1 for n in stored.GetSize()]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(corner),
                                   stored.TransformIndexToPhysicalPoint(corner), atol=1e-4, err_msg=entry.role)
        truth = sitk.GetArrayFromImage(stored).astype(np.float32)
        if entry.role.startswith("sub"):
            truth = truth - sitk.GetArrayFromImage(phantom.images["pre"]).astype(np.float32)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)  # integer voxels stored exactly


def test_missing_phase_error_then_roles(tmp_path, phantom, capsys):
    """One post-contrast series named so that nothing marks it dynamic: 5 of 6 phases found."""
    images = phantom.images
    study = tmp_path / "study"
    specs = dicomsynth.style_series("duke", images["t1"], images["pre"], [images[p] for p in POSTS])
    specs[4].description = "ax 3d delayed"  # really post_3, series 500
    dicomsynth.write_specs(study, specs, "MISSING", duke_layout=True)
    code, err = roles_json(capsys, study, "--channels", "6")
    assert code == 2
    assert "expected 6 post-contrast phases" in err and "found 5" in err
    for number in (300, 400, 600, 700, 800):
        assert f"series {number} 'ax dyn" in err
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"post": [300, 400, 500, "600", 700, 800]}))
    code, table = roles_json(capsys, study, "--channels", "6", "--roles", roles, "--json")
    assert code == 0
    assert [(r["role"], r["series_number"]) for r in table["roles"]][1:4] == [("pre", 200), ("post_1", 300),
                                                                               ("post_2", 400)]
    assert table["roles"][4]["description"] == "ax 3d delayed" and table["roles"][4]["confidence"] == "user"
    # or a site's wording taught once: "delayed" is a dynamic phase there
    patterns = tmp_path / "patterns.json"
    patterns.write_text(json.dumps({"dynamic": RolePatterns().dynamic + "|delayed"}))
    code, table = roles_json(capsys, study, "--channels", "6", "--patterns", patterns, "--json")
    assert code == 0 and [r["series_number"] for r in table["roles"]] == [100 * k for k in range(1, 9)]
    patterns.write_text(json.dumps({"dynamic": "dyn("}))
    code, err = roles_json(capsys, study, "--patterns", patterns)
    assert code == 2 and "dynamic: not a regular expression" in err


def test_two_pre_candidates_error_then_roles(tmp_path, phantom, capsys):
    """A repeated pre-contrast series (e.g. after motion): which one is meant is the user's call."""
    repeat = dicomsynth.SeriesSpec("ax dyn pre", [phantom.images["pre"]], [20.0], reverse_instances=True)
    study = write(tmp_path / "study", "duke", phantom, extra=[repeat])
    code, err = roles_json(capsys, study, "--channels", "6")
    assert code == 2
    assert "2 candidate pre-contrast series" in err
    assert "series 200 'ax dyn pre'" in err and "series 900 'ax dyn pre'" in err and "--roles" in err
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"pre": "200"}))
    code, table = roles_json(capsys, study, "--channels", "6", "--roles", roles, "--json")
    assert code == 0
    assert [(r["role"], r["series_number"]) for r in table["roles"]] == [
        ("t1", 100), ("pre", 200), *[(f"post_{k}", 200 + 100 * k) for k in range(1, 7)]]
    assert table["roles"][1]["confidence"] == "user"


def _sagittal(image: sitk.Image) -> sitk.Image:
    out = sitk.Image(image)
    out.SetDirection(dicomsynth.SAGITTAL)
    return out


def test_mixed_orientations_error_then_roles(tmp_path, phantom, capsys):
    """An axial and a sagittal dynamic series in one study."""
    images = phantom.images
    sag = dicomsynth.SeriesSpec("Sag Vibrant MultiPhase", [_sagittal(images[p]) for p in ["pre", *POSTS]],
                                [60.0 + 75.0 * i for i in range(7)], scan_options="FS", temporal_tags=True,
                                one_acquisition_time=True)
    study = write(tmp_path / "study", "ge", phantom, extra=[sag])
    code, err = roles_json(capsys, study, "--channels", "6")
    assert code == 2
    assert "mix slice orientations" in err
    assert "series 200:1 'Ax Vibrant MultiPhase' (axial" in err
    assert "series 400:1 'Sag Vibrant MultiPhase' (sagittal" in err
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"pre": "200:1", "post": ["200"]}))
    code, table = roles_json(capsys, study, "--channels", "6", "--roles", roles, "--json")
    assert code == 0
    assert [(r["series_number"], r["phase"], r["orientation"]) for r in table["roles"][1:]] == [
        (200, k, "axial") for k in range(1, 8)]
    # naming a sagittal phase next to axial ones is refused in turn
    roles.write_text(json.dumps({"pre": "400:1", "post": ["200:2", "200:3", "200:4", "200:5", "200:6", "200:7"]}))
    code, err = roles_json(capsys, study, "--channels", "6", "--roles", roles)
    assert code == 2 and "mix slice orientations" in err


def test_bad_roles_file(tmp_path, studies, capsys):
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"post": [4711]}))
    code, err = roles_json(capsys, studies["duke"], "--roles", roles)
    assert code == 2 and "4711" in err and "matches 0 series" in err
    roles.write_text(json.dumps({"t1": 300}))
    code, err = roles_json(capsys, studies["ge"], "--roles", roles)
    assert code == 2 and "'300'" in err and "no usable volume (mixes 3 slice orientations)" in err
    roles.write_text("{not json")
    code, err = roles_json(capsys, studies["duke"], "--roles", roles)
    assert code == 2 and str(roles) in err and "JSON" in err
    code, err = roles_json(capsys, tmp_path)
    assert code == 2 and "no DICOM image series" in err
