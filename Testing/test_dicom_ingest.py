"""``breastcmsl-train ingest`` on a tiny synthetic stand-in for Duke-Breast-Cancer-MRI (same layout)."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.cohort.manifest import read_manifest
from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.network.modelfile import load_model
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case
from BreastCMSLLib.pipeline.preprocess import load_case
from Testing import dicomsynth
from Training.ingest import ingest

from .conftest import run_cli

POSTS = [f"post_{k}" for k in range(1, 7)]
SHAPE = (64, 44, 32)  # the default field of view (360 x 232 x 144 mm) at ~5 mm voxels
SUBJECTS = {"Breast_MRI_001": (1, 1, "train"), "Breast_MRI_002": (2, 0, "train"),
            "Breast_MRI_003": (3, 1, "val"), "Breast_MRI_004": (4, 0, "test")}  # seed, label, split


def duke_box(lesion: sitk.Image) -> tuple[list[int], tuple[float, float, float]]:
    """Duke's 1-based inclusive box of a lesion mask (slices in the reversed instance order that
    dicomsynth's Duke style writes) and the LPS point of the box centre."""
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(lesion))
    n = lesion.GetSize()[2]
    box = [j.min() + 1, j.max() + 1, i.min() + 1, i.max() + 1, n - k.max(), n - k.min()]
    centre = lesion.TransformContinuousIndexToPhysicalPoint(
        [(i.min() + i.max()) / 2, (j.min() + j.max()) / 2, (k.min() + k.max()) / 2])
    return [int(v) for v in box], centre


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("duke")
    dicom_root = root / "manifest-1654812109500" / "Duke-Breast-Cancer-MRI"
    cfg = PhantomConfig(shape=SHAPE)
    centres, boxes = {}, []
    for subject, (seed, label, _) in SUBJECTS.items():
        case = make_case(seed, dataclasses.replace(cfg, label=label))
        im = case.images
        dicomsynth.write_study(dicom_root / subject, "duke", im["t1"], im["pre"], [im[p] for p in POSTS], subject)
        box, centres[subject] = duke_box(case.lesion_mask)
        boxes.append([subject, *box])
    # an ambiguous study (a repeated pre-contrast series) is reported, not fatal
    bad = make_case(5, cfg).images
    repeat = dicomsynth.SeriesSpec("ax dyn pre", [bad["pre"]], [30.0], reverse_instances=True)
    dicomsynth.write_study(dicom_root / "Breast_MRI_005", "duke", bad["t1"], bad["pre"], [bad[p] for p in POSTS],
                           "Breast_MRI_005", extra=[repeat])
    with open(root / "Annotation_Boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Patient ID", "Start Row", "End Row", "Start Column", "End Column",
                                  "Start Slice", "End Slice"], *boxes])
    with open(root / "labels.csv", "w", newline="") as f:
        rows = [[s, label, split] for s, (_, label, split) in SUBJECTS.items()]
        csv.writer(f).writerows([["subject_id", "label", "split"], *rows, ["Breast_MRI_005", 1, "train"],
                                 ["Breast_MRI_006", 0, "train"]])
    manifest = root / "out" / "manifest.csv"
    summary = ingest(dicom_root, root / "labels.csv", manifest, workers=2, boxes=root / "Annotation_Boxes.csv",
                     n_channels=6)
    return manifest, summary, centres


def test_manifest_cases_and_centres(cohort):
    manifest, summary, centres = cohort
    assert summary["cases"] == 4
    assert set(summary["failures"]) == {"Breast_MRI_005", "Breast_MRI_006"}
    assert "2 candidate pre-contrast series" in summary["failures"]["Breast_MRI_005"]
    assert "no study folder" in summary["failures"]["Breast_MRI_006"]
    with open(manifest.parent / "ingest_failures.csv") as f:
        assert [r["subject_id"] for r in csv.DictReader(f)] == ["Breast_MRI_005", "Breast_MRI_006"]
    header = manifest.read_text().splitlines()[0]
    assert header == "subject_id,label,split,case_dir,birads,center_lps_x,center_lps_y,center_lps_z"
    cases = {c.subject_id: c for c in read_manifest(manifest)}
    assert set(cases) == set(SUBJECTS)
    # finished cases only: no staging folder is left, not even of the failed study
    assert sorted(p.name for p in (manifest.parent / "cases").iterdir()) == sorted(SUBJECTS)
    for subject, (_, label, split) in SUBJECTS.items():
        case = cases[subject]
        assert (case.label, case.split) == (label, split)
        np.testing.assert_allclose(case.center_lps, centres[subject], atol=1e-3)  # manifest keeps 4 decimals
        inputs = load_case(case.case_dir)
        assert inputs.kind == "phases" and len(inputs.series) == 7
        info = json.loads((case.case_dir / "case.json").read_text())
        assert [r["description"] for r in info["roles"]["roles"][:3]] == ["ax t1", "ax dyn pre", "ax dyn 1st pass"]
        assert "ax dyn 6th pass" in (case.case_dir / "roles.txt").read_text()


def test_centres_match_phantom_truth(cohort):
    """The box centre lies within a voxel diagonal of the phantom's true lesion centre."""
    manifest, _, _ = cohort
    for case in read_manifest(manifest):
        truth = json.loads((case.case_dir / "case.json").read_text())
        assert truth["center_lps"] == pytest.approx(list(case.center_lps), abs=1e-3)
    for subject, (seed, label, _) in SUBJECTS.items():
        phantom = make_case(seed, PhantomConfig(shape=SHAPE, label=label))
        case = next(c for c in read_manifest(manifest) if c.subject_id == subject)
        voxel_diagonal = np.linalg.norm(phantom.lesion_mask.GetSpacing())
        assert np.linalg.norm(np.subtract(case.center_lps, phantom.truth["center_lps"])) < voxel_diagonal


def test_rerun_via_cli_keeps_finished_cases(cohort, tmp_path):
    manifest, _, _ = cohort
    root = manifest.parent.parent
    stamp = {c.subject_id: (c.case_dir / "t1.nrrd").stat().st_mtime_ns for c in read_manifest(manifest)}
    proc = run_cli("ingest", "--dicom-root", root / "manifest-1654812109500" / "Duke-Breast-Cancer-MRI",
                   "--labels", root / "labels.csv", "--out", manifest, "--boxes", root / "Annotation_Boxes.csv",
                   "--channels", 6, module="Training.cli")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cases"] == 4
    assert {c.subject_id: (c.case_dir / "t1.nrrd").stat().st_mtime_ns for c in read_manifest(manifest)} == stamp
    proc = run_cli("ingest", "--dicom-root", root, "--labels", tmp_path / "none.csv", "--out", tmp_path / "m.csv",
                   module="Training.cli")
    assert proc.returncode == 2 and proc.stderr.strip().endswith("none.csv: no such file")
    assert not (tmp_path / "m.csv").exists()


def test_training_preprocess_and_fit_accept_manifest(cohort, tmp_path):
    from Training.cache import preprocess_cohort
    from Training.trainer import FitConfig, fit

    manifest, _, _ = cohort
    report = preprocess_cohort(manifest, tmp_path / "cache", PreprocessConfig(input_size=(64, 48, 32)),
                               progress=False)
    assert sorted(report.done) == sorted(SUBJECTS) and not report.failed
    result = fit(FitConfig(cache=str(tmp_path / "cache"), out=str(tmp_path / "run"), method="cmsl", epochs=1,
                           batch_size=2, width_factor=0.125, device="cpu", seed=0))
    assert result["epoch"] == 1 and np.isfinite(result["train_loss"])
    assert load_model(tmp_path / "run" / "model_last.safetensors").config.in_channels == 6


def test_t1_less_study_ingests_and_preprocesses(tmp_path):
    """A Duke-style study without the non-fat-suppressed T1: the case folder holds no t1, case.json says
    the mask comes from the pre-contrast phase, and Training's cache preprocesses it."""
    from Training.cache import preprocess_cohort

    dicom_root = tmp_path / "dicom"
    im = make_case(6, PhantomConfig(shape=SHAPE, label=1)).images
    dicomsynth.write_study(dicom_root / "FS_ONLY_001", "duke", None, im["pre"], [im[p] for p in POSTS], "FS_ONLY_001")
    (tmp_path / "labels.csv").write_text("subject_id,label,split\nFS_ONLY_001,1,train\n")
    manifest = tmp_path / "out" / "manifest.csv"
    summary = ingest(dicom_root, tmp_path / "labels.csv", manifest, n_channels=6)
    assert summary["cases"] == 1 and not summary["failures"]
    (case,) = read_manifest(manifest)
    assert sorted(p.name for p in case.case_dir.glob("*.nrrd")) == sorted(f"{n}.nrrd" for n in ["pre", *POSTS])
    info = json.loads((case.case_dir / "case.json").read_text())
    assert info["mask_source"] == "pre" and info["roles"]["mask_source"] == "pre"
    inputs = load_case(case.case_dir)
    assert inputs.t1 is None and inputs.sources[0] is None and inputs.mask_source == "pre"
    report = preprocess_cohort(manifest, tmp_path / "cache", PreprocessConfig(input_size=(64, 48, 32)),
                               progress=False)
    assert report.done == ["FS_ONLY_001"] and not report.failed
