"""Role rules on whole clinical protocols (header facts only, no pixels): T2, DWI, localizers, MIPs and
the usual Siemens / GE / Philips / Duke wording around the DCE series."""

from __future__ import annotations

from pathlib import Path

import pytest

from BreastCMSLLib.dicom.roles import RolePatterns, assign_by_name, assign_roles, fat_suppression
from BreastCMSLLib.dicom.series import Frame, Phase, Series
from BreastCMSLLib.errors import InputError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def series(number: int, description: str, phases: int = 1, t0: float = 0.0, image_type=("ORIGINAL", "PRIMARY"),
           scan_options: str = "") -> Series:
    """A header-only series: ``phases`` phases 60 s apart from ``t0`` s (after 08:00)."""
    s = Series(f"1.2.3.{number}", number, description, tuple(image_type), scan_options, None)
    s.phases = [Phase(s, i, [Frame(Path(f"{number}_{i}"), None, (0.0, 0.0, 0.0), AXIAL, i)], 28800 + t0 + 60 * i)
                for i in range(1, phases + 1)]
    return s


def roles(protocol: list[Series], n: int = 4) -> list[tuple[str, int, int]]:
    return [(e.role, e.phase.series.number, e.phase.index) for e in assign_roles(protocol, n_channels=n).entries]


def test_siemens_protocol():
    dyn = "t1_fl3d_tra_dynaVIEWS_spair"
    protocol = [series(1, "localizer"), series(2, "t2_tse_tra"), series(3, "t2_tirm_tra"),
                series(4, "ep2d_diff_b50_800_tra"), series(5, "ep2d_diff_b50_800_tra_ADC", image_type=("DERIVED",)),
                series(6, "t1_fl3d_tra_nonFS"),
                *[series(7 + i, dyn, t0=100 + 80 * i, scan_options="FS") for i in range(5)],
                *[series(12 + i, f"{dyn}_SUB", t0=180 + 80 * i, image_type=("DERIVED", "PRIMARY", "SUB"))
                  for i in range(4)],
                series(16, f"{dyn}_SUB_MIP_TRA", image_type=("DERIVED", "PRIMARY", "MIP_TRA", "SUB"))]
    assert roles(protocol) == [("t1", 6, 1), ("pre", 7, 1), *[(f"post_{k}", 7 + k, 1) for k in range(1, 5)]]
    # without the raw phases the scanner subtractions are used, the MIP never
    no_raw = [s for s in protocol if s.number not in range(7, 12)]
    assert roles(no_raw) == [("t1", 6, 1), *[(f"sub_{k}", 11 + k, 1) for k in range(1, 5)]]


def test_ge_protocol():
    protocol = [series(1, "3-Plane Loc"), series(2, "Ax T2 FSE FS", scan_options="FAST_GEMS\\FS"),
                series(3, "Ax DWI 800"), series(4, "Ax T1 NON FS", scan_options="FAST_GEMS"),
                series(5, "Ax VIBRANT MPh", phases=5, t0=100, scan_options="FAST_GEMS\\FS"),
                series(6, "Sag VIBRANT +C delay", t0=900)]
    table = assign_roles(protocol[:5], n_channels=4)
    assert [(e.role, e.phase.series.number, e.phase.index) for e in table.entries] == [
        ("t1", 4, 1), ("pre", 5, 1), *[(f"post_{k}", 5, k + 1) for k in range(1, 5)]]
    assert table.entries[0].confidence == "high" and "not fat-suppressed" in table.entries[0].reason
    with pytest.raises(InputError, match=r"expected 4 post-contrast phases .* found 5"):
        assign_roles(protocol, n_channels=4)  # the delayed series counts as a fifth phase: the user decides


def test_philips_and_duke_wording():
    philips = [series(1, "Survey"), series(2, "T2W_SPAIR"), series(3, "DWI_b0_1000"), series(4, "T1W_TSE"),
               series(5, "Dyn_eTHRIVE_pre", t0=100), series(6, "Dyn_eTHRIVE_post", phases=4, t0=200)]
    assert roles(philips) == [("t1", 4, 1), ("pre", 5, 1), *[(f"post_{k}", 6, k) for k in range(1, 5)]]
    duke = [series(1, "ax t1 tse"), series(2, "ax dyn pre", t0=100),
            *[series(3 + i, f"ax dyn {o} pass", t0=200 + 80 * i) for i, o in enumerate(["1st", "2nd", "3rd", "4th"])]]
    assert roles(duke) == [("t1", 1, 1), ("pre", 2, 1), *[(f"post_{k}", 2 + k, 1) for k in range(1, 5)]]


def test_ambiguous_t1_and_custom_patterns():
    protocol = [series(1, "T1W_TSE"), series(2, "t1_fl3d_nonFS_sag"), series(3, "Dyn_eTHRIVE", phases=5, t0=100)]
    with pytest.raises(InputError, match=r"2 candidates for the non-fat-suppressed T1 \(series 1 'T1W_TSE'.*"
                                         r"series 2 't1_fl3d_nonFS_sag'"):
        assign_roles(protocol, n_channels=4)
    site = RolePatterns(exclude=RolePatterns().exclude + "|_sag")  # a site rule: sagittal T1s are not inputs
    assert [e.phase.series.number for e in assign_roles(protocol, n_channels=4, patterns=site).entries] == [
        1, 3, 3, 3, 3, 3]


@pytest.mark.parametrize(("description", "scan_options", "expected"), [
    ("Ax T1 FSE", "", None), ("Ax T1 FSE", "FAST_GEMS\\EDR_GEMS", False), ("T1W_TSE", "", None),
    ("t1_fl3d_tra_nonFS", "", False), ("Ax T1 NON FS", "", False), ("t1 nfs", "", False),
    ("T1_SPAIR", "", True), ("t1_fs_tra", "", True), ("T1 FatSat", "", True), ("T1 Dixon_W", "", True),
    ("t1_fl3d_tra", "PFP\\FS", True), ("Ax T1", "FAST_GEMS\\SAT_GEMS\\FS", True)])
def test_fat_suppression_hints(description, scan_options, expected):
    assert fat_suppression(series(1, description, scan_options=scan_options))[0] is expected


def test_pattern_overrides_are_checked_where_they_come_from():
    """PATTERNS.json and the module's *Name patterns* fields go through the same check."""
    site = RolePatterns.from_overrides({"post": r"kontrast|nach", "t1": r"t1w"}, "Name patterns")
    assert (site.post, site.t1, site.pre) == (r"kontrast|nach", r"t1w", RolePatterns().pre)
    assert site.match("post", "ax 3d nach KM") and not site.match("t1", "ax t1 fs")
    with pytest.raises(InputError, match=r"^Name patterns: pre: not a regular expression \(missing \)"):
        RolePatterns.from_overrides({"pre": "pre(", "post": "post"}, "Name patterns")
    with pytest.raises(InputError, match=r"^site.json: expected a JSON object with keys among t1, non_fat_sat"):
        RolePatterns.from_overrides({"t1": "t1", "posts": "post"}, "site.json")
    with pytest.raises(InputError, match=r"^site.json: t1: not a regular expression"):
        RolePatterns.from_overrides({"t1": 1}, "site.json")


def test_assign_by_name_phantom_and_vendor_wording():
    names = ["t1", "post_2", "pre", "post_1", "post_3", "coam map"]
    assert assign_by_name(names, "phases", 3) == {"inputs": "phases", "t1": 0, "series": [2, 3, 1, 4], "notes": []}
    duke = ["1: 3 plane loc", "3: ax t1 non fs", "5: ax dyn pre", "7: ax dyn 2nd pass", "6: ax dyn 1st pass",
            "8: ax dyn 3rd pass", "9: ax t2 fs"]
    assert assign_by_name(duke, "phases", 3) == {"inputs": "phases", "t1": 1, "series": [2, 4, 3, 5], "notes": []}
    subs = ["sub_2", "T1", "sub_1", "sub_3"]
    assert assign_by_name(subs, "subtractions", 3) == {"inputs": "subtractions", "t1": 1, "series": [2, 0, 3],
                                                       "notes": []}
    missing = assign_by_name(["t1", "sub_1"], "subtractions", 2)
    assert missing["series"] == [1, None] and missing["notes"] == [
        "some inputs were not recognized by name; choose them by hand"]
    two = assign_by_name(["ax t1 a", "ax t1 b", "pre", "post_1"], "phases", 1)
    assert two == {"inputs": "phases", "t1": 0, "series": [2, 3],
                   "notes": ["2 T1 candidates (ax t1 a, ax t1 b); took the first"]}


# Published naming families (Duke-Breast-Cancer-MRI, ISPY2): the T1 (or none), pre and 4 posts in order.
ORDINALS = ("1st", "2nd", "3rd", "4th")
FAMILIES = {
    "duke ax dyn": ([series(1, "ax t1"), series(2, "ax dyn pre", t0=100),
                     *[series(3 + i, f"ax dyn {o} pass", t0=200 + 80 * i) for i, o in enumerate(ORDINALS)]],
                    [("t1", 1, 1), ("pre", 2, 1), *[(f"post_{k}", 2 + k, 1) for k in range(1, 5)]]),
    "duke ax 3d dyn": ([series(1, "ax t1 tse"), series(2, "ax 3d dyn", t0=100),
                        *[series(3 + i, f"Ph{i + 1}/ax 3d dyn", t0=200 + 80 * i) for i in range(4)]],
                       [("t1", 1, 1), ("pre", 2, 1), *[(f"post_{k}", 2 + k, 1) for k in range(1, 5)]]),
    "duke vibrant": ([series(1, "Ax 3D T1 NON FS"), series(2, "Ax Vibrant MultiPhase", t0=100),
                      *[series(3 + i, f"Ph{i + 1}/Ax Vibrant MultiPhase", t0=200 + 80 * i) for i in range(4)]],
                     [("t1", 1, 1), ("pre", 2, 1), *[(f"post_{k}", 2 + k, 1) for k in range(1, 5)]]),
    "duke vibrant one series": ([series(1, "ax t1"), series(2, "Ax Vibrant MultiPhase", phases=5, t0=100)],
                                [("t1", 1, 1), ("pre", 2, 1), *[(f"post_{k}", 2, k + 1) for k in range(1, 5)]]),
    "duke siemens views": ([series(1, "ax t1"), series(2, "t1_fl3d_tra_dynVIEWS_spair_ pre", t0=100),
                            *[series(3 + i, f"t1_fl3d_tra_dynVIEWS_spair_ {o} pass", t0=200 + 80 * i)
                              for i, o in enumerate(ORDINALS)]],
                           [("t1", 1, 1), ("pre", 2, 1), *[(f"post_{k}", 2 + k, 1) for k in range(1, 5)]]),
    "ispy2 uni-lateral": ([series(1, "ISPY2: VOLSER: uni-lateral cropped: original DCE", phases=5, t0=100),
                           series(2, "ISPY2: VOLSER: uni-lateral cropped: PE2", t0=900),
                           series(3, "ISPY2: VOLSER: uni-lateral cropped: SER", t0=900)],
                          [("pre", 1, 1), *[(f"post_{k}", 1, k + 1) for k in range(1, 5)]]),
    "ispy2 bi-lateral": ([series(1, "ISPY2: VOLSER: bi-lateral: original DCE", phases=5, t0=100)],
                         [("pre", 1, 1), *[(f"post_{k}", 1, k + 1) for k in range(1, 5)]]),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_published_naming_families(family):
    protocol, expected = FAMILIES[family]
    assert roles(protocol) == expected
    assert assign_roles(protocol, n_channels=4).mask_source == ("t1" if expected[0][0] == "t1" else "pre")


def test_name_and_time_disagree():
    """Duke holds subjects whose post-contrast series are labelled ``pre``: the error says which."""
    labelled_pre = [series(1, "ax t1"), series(2, "ax dyn pre", t0=100),
                    *[series(3 + i, "ax dyn pre", t0=200 + 80 * i) for i in range(4)]]
    with pytest.raises(InputError, match=r"5 candidate pre-contrast series .*by acquisition time series 2 'ax dyn "
                                         r"pre' \(08:02:40.0\) comes first, and 3, 4, 5, 6 named pre-contrast came "
                                         r"after it: name and acquisition time disagree"):
        assign_roles(labelled_pre, n_channels=4)
    late_pre = [series(1, "ax t1"), series(2, "ax 3d dyn", t0=100), series(3, "ax dyn pre", t0=180),
                *[series(4 + i, f"Ph{i + 1}/ax 3d dyn", t0=260 + 80 * i) for i in range(3)]]
    with pytest.raises(InputError, match=r"acquired before the pre-contrast phase series 3 'ax dyn pre'.*series 2 "
                                         r"'ax 3d dyn'.*its name says pre-contrast but its acquisition time does "
                                         r"not: name and time disagree"):
        assign_roles(late_pre, n_channels=3)


def test_no_t1_candidate_is_no_t1():
    """Fat-suppressed series only: no T1 entry, the mask from the pre-contrast phase; ROLES.json can also
    say so ({"t1": null}) where a T1-like series should not be used."""
    fs_only = [series(1, "Ax Vibrant MultiPhase", phases=5, t0=100, scan_options="FAST_GEMS\\FS")]
    table = assign_roles(fs_only, n_channels=4)
    assert table.t1 is None and table.mask_source == "pre" and table.entries[0].role == "pre"
    assert table.reference.role == "post_1" and table.reference.phase.index == 2
    with_t1 = [series(2, "ax t1"), *fs_only]
    assert assign_roles(with_t1, {"t1": None}, n_channels=4).mask_source == "pre"
    assert assign_roles(with_t1, n_channels=4).mask_source == "t1"
