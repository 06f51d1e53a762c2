"""Duke-Breast-Cancer-MRI: boxes as per-breast truth, the file-name mapping and the tumour side
(``breastcmsl-train ingest --unit breast``) on DICOM studies in Duke's layout (Testing/dicomsynth.py)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.pipeline.preprocess import load_case
from Testing import dicomsynth, publiccohorts
from Training.duke import read_mapping, read_sides
from Training.ingest import ingest
from Training.unitmanifest import read_units

POSTS = 3
# subject: seed, instances against the slice position, a second pre-contrast series (the rules cannot choose)
STUDIES = {"Breast_MRI_001": (2, True, False), "Breast_MRI_002": (1, False, True), "Breast_MRI_003": (4, True, False)}
SIDES = {"Breast_MRI_001": "R", "Breast_MRI_002": "L", "Breast_MRI_003": "R"}


def _specs(case, reverse: bool, repeat: bool) -> list[dicomsynth.SeriesSpec]:
    im = case.images
    volumes = [im["t1"], im["pre"], *(im[f"post_{k}"] for k in range(1, POSTS + 1))]
    names = ["ax t1", "ax dyn pre", *(f"ax dyn {dicomsynth.ORDINALS[k]} pass" for k in range(POSTS))]
    times = [0.0, *(60.0 + 75.0 * k for k in range(POSTS + 1))]
    if repeat:  # series 600: a repeated pre-contrast acquisition
        names, volumes, times = [*names, "ax dyn pre"], [*volumes, im["pre"]], [*times, 30.0]
    return [dicomsynth.SeriesSpec(n, [v], [t], reverse_instances=reverse, file_name="1-{n:03d}.dcm")
            for n, v, t in zip(names, volumes, times, strict=True)]


@pytest.fixture(scope="module")
def duke(tmp_path_factory):
    root = tmp_path_factory.mktemp("duke")
    dicom_root = root / "Duke-Breast-Cancer-MRI"
    boxes, lesions, mapping = {}, {}, []
    for subject, (seed, reverse, repeat) in STUDIES.items():
        case = publiccohorts.duke_phantom(seed)
        written = dicomsynth.write_specs(dicom_root / subject, _specs(case, reverse, repeat), subject, True)
        lesions[subject] = case.lesion_mask
        boxes[subject] = publiccohorts.duke_box(case.lesion_mask, reverse)
        for phase, files in zip(["pre", *(f"post_{k}" for k in range(1, POSTS + 1))], list(written.values())[1:],
                                strict=True):
            mapping.append((f"DICOM_Images/{subject}/{phase}/{subject}_{phase}_001.dcm",
                            files[0].relative_to(root).as_posix()))
    # Breast_MRI_003: a box reaching across the midline (columns 20-29 of 48); the clinical table says right
    r0, r1 = boxes["Breast_MRI_003"][:2]
    boxes["Breast_MRI_003"] = [r0, r1, 20, 29, *boxes["Breast_MRI_003"][4:]]
    tables = root / "tables"
    publiccohorts.write_duke_tables(tables, boxes, SIDES, mapping)
    (root / "labels.csv").write_text("subject_id,label,split\n" + "".join(f"{s},1,train\n" for s in STUDIES))
    manifest = root / "out" / "manifest.csv"
    summary = ingest(dicom_root, root / "labels.csv", manifest, boxes=tables / "Annotation_Boxes.xlsx",
                     mapping=tables / "Breast-Cancer-MRI-filepath_filename-mapping.xlsx",
                     clinical=tables / "Clinical_and_Other_Features.xlsx", unit="breast")
    return root, manifest, summary, lesions, boxes


def _bounding_box(mask: sitk.Image) -> list[int]:
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(mask))
    return [i.min(), i.max(), j.min(), j.max(), k.min(), k.max()]


def test_box_is_the_lesions_bounding_box_in_either_instance_order(duke):
    """Slices count in instance order: against the slice position (001) or with it (002), the box lands on the
    phantom lesion's own bounding box, voxel for voxel."""
    root, _, summary, lesions, _ = duke
    assert summary["cases"] == 3 and not summary["failures"]
    for subject in ("Breast_MRI_001", "Breast_MRI_002"):
        box = sitk.ReadImage(str(root / "out" / "cases" / subject / "truth" / "lesion_mask.nrrd"))
        assert _bounding_box(box) == _bounding_box(lesions[subject])
        assert int(sitk.GetArrayViewFromImage(box).sum()) == np.prod(
            np.diff(np.reshape(_bounding_box(lesions[subject]), (3, 2)), axis=1) + 1)


def test_per_breast_labels_from_the_box_and_the_clinical_side(duke):
    _, manifest, summary, _, _ = duke
    units = {u.case.subject_id: u for u in read_units(manifest)}
    assert len(units) == 6
    labels = {sid: u.case.label for sid, u in units.items()}
    assert labels == {"Breast_MRI_001_left": 0, "Breast_MRI_001_right": 1, "Breast_MRI_002_left": 1,
                      "Breast_MRI_002_right": 0, "Breast_MRI_003_left": 0, "Breast_MRI_003_right": 1}
    assert "across the midline" in summary["notes"]["Breast_MRI_003"]
    assert set(summary["notes"]) == {"Breast_MRI_003"}
    for sid, u in units.items():
        has_truth = any(u.case.case_dir.glob("truth/lesion_mask.*"))
        assert has_truth == bool(u.case.label), sid
        assert load_case(u.case.case_dir).n_channels == POSTS


def test_mapping_names_the_phases_the_rules_cannot_read(duke, tmp_path):
    root, _, _, _, _ = duke
    roles = read_mapping(root / "tables" / "Breast-Cancer-MRI-filepath_filename-mapping.xlsx")
    assert roles["Breast_MRI_002"] == {"pre": 200, "post": [300, 400, 500]}
    without = ingest(root / "Duke-Breast-Cancer-MRI", root / "labels.csv", tmp_path / "m.csv")
    assert set(without["failures"]) == {"Breast_MRI_002"}
    assert "2 candidate pre-contrast series" in without["failures"]["Breast_MRI_002"]


def test_clinical_table_header_rows_are_skipped(duke):
    root, _, _, _, _ = duke
    assert read_sides(root / "tables" / "Clinical_and_Other_Features.xlsx") == {
        "Breast_MRI_001": "right", "Breast_MRI_002": "left", "Breast_MRI_003": "right"}
