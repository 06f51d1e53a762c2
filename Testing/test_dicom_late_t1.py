"""Studies with a second non-fat-suppressed T1 acquired after contrast, in every vendor style dicomsynth writes: the
mask T1 is the one before contrast, the late T1 takes no role and the inventory says why."""

from __future__ import annotations

import json

import pytest

from BreastCMSLLib.cli import main
from BreastCMSLLib.dicom.roles import assign_roles
from Testing import dicomsynth
from Testing.dicomsynth import SeriesSpec

from .test_dicom_patterns import series
from .test_dicom_roles import EXPECTED, POSTS

# the late T1 of each style: (description, how it is recognized); it is written last, after the dynamic series
LATE = {"siemens": ("t1_fl3d_tra_nonFS", "acquired after contrast"),  # the same name as the T1: time decides
        "ge": ("Ax T1 FSE +C", "contrast marker"),
        "philips": ("T1W_TSE_tra_Gd", "contrast marker"),
        "duke": ("ax t1 c", "contrast marker")}
N_SERIES = {"siemens": 15, "ge": 3, "philips": 7, "duke": 8}  # series each style writes before the late T1


@pytest.fixture(scope="module")
def phantom():
    from BreastCMSLLib.phantom.parameters import PhantomConfig
    from BreastCMSLLib.phantom.synth import make_case

    from .test_dicom_roles import ROTATION

    cfg = PhantomConfig(shape=(48, 36, 16), spacing=(5.0, 5.5, 6.0), origin=(-110.0, -95.0, -40.0),
                        direction=ROTATION, label=1)
    return make_case(3, cfg)


@pytest.mark.parametrize("style", dicomsynth.STYLES)
def test_late_t1_is_set_aside_in_every_style(style, phantom, tmp_path, capsys):
    images = phantom.images
    description, why = LATE[style]
    scan_options = "FAST_GEMS\\EDR_GEMS" if style == "ge" else ""
    duke = style == "duke"
    late = SeriesSpec(description, [images["t1"]], [900.0], scan_options=scan_options, reverse_instances=duke,
                      file_name="1-{n:03d}.dcm" if duke else "IM{n:04d}.dcm")
    dicomsynth.write_study(tmp_path, style, images["t1"], images["pre"], [images[p] for p in POSTS], extra=[late])
    late_number = 100 * (N_SERIES[style] + 1)

    assert main(["roles", str(tmp_path), "--json", "--channels", "6"]) == 0
    table = json.loads(capsys.readouterr().out)
    kind, names, ids = EXPECTED[style]
    assert table["kind"] == kind and table["mask_source"] == "t1"
    assert [r["role"] for r in table["roles"]] == names
    assert [(r["series_number"], r["phase"]) for r in table["roles"]] == ids  # the T1 is series 100, before contrast
    listed = {s["series_number"]: s for s in table["series"]}
    assert why in listed[late_number]["set_aside"] and "neither the mask T1 nor a dynamic phase" in listed[
        late_number]["set_aside"]
    assert sum(bool(s["set_aside"]) for s in table["series"]) == 1

    assert main(["roles", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"series {late_number} '{description}' set aside: non-fat-suppressed T1" in text


@pytest.mark.parametrize("description", ["Ax T1 +C", "AX T1 C", "ax t1 c+", "T1W_TSE post", "t1 nonFS GAD",
                                         "T1W_TSE_Gd", "T1 with contrast"])
def test_contrast_markers(description):
    early, dyn = series(1, "T1W_TSE"), series(3, "Dyn_eTHRIVE", phases=5, t0=100)
    late = series(2, description, t0=-50)  # named after contrast although its clock says earlier: the name decides
    table = assign_roles([early, late, dyn], n_channels=4)
    assert [(e.role, e.phase.series.number) for e in table.entries][:2] == [("t1", 1), ("pre", 3)]
    assert [e.phase.series.number for e in table.entries[2:]] == [3] * 4


def test_only_a_late_t1_means_no_t1_and_other_wording_is_unchanged():
    dyn = series(3, "Dyn_eTHRIVE", phases=5, t0=100)
    table = assign_roles([series(2, "T1W_TSE", t0=900), dyn], n_channels=4)
    assert table.t1 is None and table.mask_source == "pre"
    # no contrast marker, acquired before the dynamic series: still the T1
    assert assign_roles([series(1, "T1W_TSE"), dyn], n_channels=4).t1.phase.series.number == 1
    # pass and phase numbers stay dynamic wording, not a late T1
    passes = [series(1, "ax t1"), series(2, "ax t1 pre", t0=100),
              *[series(3 + i, f"ax t1 {o} pass", t0=200 + 80 * i) for i, o in enumerate(["1st", "2nd", "3rd", "4th"])]]
    assert [(e.role, e.phase.series.number) for e in assign_roles(passes, n_channels=4).entries] == [
        ("t1", 1), ("pre", 2), *[(f"post_{k}", 2 + k) for k in range(1, 5)]]
