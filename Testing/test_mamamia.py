"""``breastcmsl-train ingest-mama-mia`` on a replica of the MAMA-MIA layout (Testing/publiccohorts.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.cohort.manifest import read_manifest
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.phase_times import case_times
from BreastCMSLLib.pipeline.preprocess import load_case, study_times
from Testing import publiccohorts
from Training.breasts import find_midline, image_centre_x, profile_midline
from Training.mamamia import ingest_mama_mia, report_path
from Training.unitmanifest import read_units

from .conftest import run_cli


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mamamia")
    truth = publiccohorts.write_mama_mia(root / "MAMA-MIA")
    manifest = root / "out" / "manifest.csv"
    summary = ingest_mama_mia(root / "MAMA-MIA", manifest, workers=1, val_fraction=0.5, seed=0)
    return root, manifest, summary, truth


def test_one_row_per_breast_labelled_by_the_mask(cohort):
    _, manifest, summary, truth = cohort
    units = {u.case.subject_id: u for u in read_units(manifest)}
    assert sorted(units) == ["DUKE_001_left", "DUKE_001_right", "ISPY1_1001_left", "ISPY1_1001_right",
                             "ISPY2_100899_left", "ISPY2_100899_right", "NACT_01"]
    assert summary["units"] == 7 and summary["studies"] == 4
    for study in ("DUKE_001", "ISPY1_1001", "ISPY2_100899"):
        side = truth[study]["side"]
        other = "left" if side == "right" else "right"
        assert units[f"{study}_{side}"].case.label == 1 and units[f"{study}_{other}"].case.label == 0
        assert units[f"{study}_{other}"].case.center_lps is None
        # the positive breast's centre: the mask's centroid (the box's centre without a mask), within ~ a voxel
        centre = units[f"{study}_{side}"].case.center_lps
        assert np.linalg.norm(np.subtract(centre, truth[study]["center_lps"])) < 8.0
        assert units[f"{study}_{side}"].midline_source == "mask"
        assert abs(units[f"{study}_{side}"].midline_lps_x) < 12.0  # the phantom's midline is x = 0; 2 voxels
    # ISPY2 has no mask: its box, read in (z, y, x) order, puts the lesion in the left breast (read as (x, y, z)
    # its centre would fall in the right one)
    assert truth["ISPY2_100899"]["side"] == "left"
    assert units["ISPY2_100899_left"].lesion_truth == "box"
    assert units["DUKE_001_right"].lesion_truth == "mask"
    single = units["NACT_01"]
    assert (single.breast, single.case.label, single.midline_source) == ("single", 1, "")


def test_phases_times_splits_and_case_folders(cohort):
    _, manifest, _, truth = cohort
    units = {u.case.subject_id: u for u in read_units(manifest)}
    for sid, u in units.items():
        posts = truth[u.study]["posts"]
        assert u.post_phases == posts
        assert list(u.phase_times_s) == publiccohorts.TIMES[:posts + 1]
        inputs = load_case(u.case.case_dir)
        assert inputs.kind == "phases" and len(inputs.series) == posts + 1
        assert json.loads((u.case.case_dir / "case.json").read_text())["breast"] == u.breast
        first = publiccohorts.TIMES[1]  # without an injection time, times count from the first post-contrast phase
        times = case_times(u.case.case_dir, posts)
        assert times.post_s == tuple(float(t - first) for t in publiccohorts.TIMES[1:posts + 1])
        assert not times.injection_given and study_times(inputs) is None  # a model's phases: taken by number
        has_truth = any(u.case.case_dir.glob("truth/lesion_mask.*"))
        assert has_truth == (u.case.label == 1 and u.lesion_truth == "mask"), sid
    # the official test studies stay test; both breasts of a study share a split
    assert {units["ISPY2_100899_left"].case.split, units["NACT_01"].case.split} == {"test"}
    for study in ("DUKE_001", "ISPY1_1001"):
        assert units[f"{study}_left"].case.split == units[f"{study}_right"].case.split != "test"
    assert {units["DUKE_001_left"].case.split, units["ISPY1_1001_left"].case.split} == {"train", "val"}
    assert len(read_manifest(manifest)) == 7  # the cohort manifest's reader takes it as it is


def test_mask_on_another_grid_is_the_truth(cohort):
    _, manifest, _, truth = cohort
    u = next(u for u in read_units(manifest) if u.case.subject_id == f"ISPY1_1001_{truth['ISPY1_1001']['side']}")
    mask = sitk.ReadImage(str(next(u.case.case_dir.glob("truth/lesion_mask.*"))))
    assert mask.GetSize() == publiccohorts.FINE
    assert load_case(u.case.case_dir).reference.GetSize() == publiccohorts.SHAPE


def test_failing_study_is_reported_and_the_others_go_on(cohort):
    _, manifest, summary, _ = cohort
    assert list(summary["failures"]) == ["DUKE_002"]
    assert "duke_002.json: no key primary_lesion.breast_coordinates" in summary["failures"]["DUKE_002"]
    with open(report_path(manifest)) as f:
        report = {r["study"]: r for r in csv.DictReader(f)}
    assert report["DUKE_002"]["status"] == "failed"
    assert "breast_coordinates" in report["DUKE_002"]["note"]
    assert report["NACT_01"]["status"] == "ok" and report["NACT_01"]["units"] == "1"
    assert not (manifest.parent / "cases" / "DUKE_002_left").exists()


def test_midline_from_the_breast_mask_not_the_image_centre():
    """A volume cropped off-centre: the image centre moves 30 mm, the midline found from the mask stays at the
    phantom's x = 0."""
    pre = publiccohorts.phantom(4).images["pre"][10:, :, :]
    assert image_centre_x(pre) > 25.0
    midline = find_midline(pre)
    assert midline.source == "mask" and abs(midline.x_mm) < 12.0
    assert profile_midline(np.array([0, 5, 9, 9, 9, 9, 9, 0])) is None  # one breast: no dip


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "MAMA-MIA"
    (bad / "images" / "DUKE_001").mkdir(parents=True)
    (bad / "patient_info_files").mkdir()
    r = run_cli("ingest-mama-mia", "--root", bad, "--out", tmp_path / "m.csv", module="Training.cli")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "clinical_and_imaging_info.xlsx" in r.stderr and not (tmp_path / "m.csv").exists()
    publiccohorts.write_xlsx(bad / "clinical_and_imaging_info.xlsx", {"dataset_info": [["id", "dataset"]]})
    with pytest.raises(InputError, match=r"clinical_and_imaging_info\.xlsx.*'patient_id'"):
        ingest_mama_mia(bad, tmp_path / "m.csv")
    publiccohorts.write_xlsx(bad / "clinical_and_imaging_info.xlsx", {"dataset_info": [["patient_id"]]})
    (bad / "train_test_splits.csv").write_text("train,test\nDUKE_001,\n")
    with pytest.raises(InputError, match=r"train_test_splits\.csv.*'train_split'"):
        ingest_mama_mia(bad, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_breasts_preprocess_and_fit_with_the_unit_in_the_model_file(cohort):
    """``preprocess --unit breast --phases 1,2`` on the manifest of breasts with 2 to 5 post-contrast phases (the
    replica resampled to 3 mm: its 24 slices are fewer than the network's stride), one epoch of fit, and the unit
    recorded in the model file."""
    from BreastCMSLLib.config import PreprocessConfig
    from BreastCMSLLib.network.modelfile import load_model
    from Training.cache import preprocess_cohort
    from Training.trainer import FitConfig, fit

    root, manifest, _, _ = cohort
    cfg = PreprocessConfig(input_size=(48, 64, 32), spacing=(3.0, 3.0, 3.0), phases=(1, 2), unit="breast")
    report = preprocess_cohort(manifest, root / "cache", cfg, progress=False)
    assert not report.failed and len(report.done) == 7
    fit(FitConfig(cache=str(root / "cache"), out=str(root / "run"), method="cmsl", epochs=1, batch_size=2,
                  width_factor=0.125, device="cpu", seed=0))
    model = load_model(root / "run" / "model_last.safetensors").config
    assert (model.preprocess.unit, model.in_channels) == ("breast", 2)


def test_localize_against_masks_one_process_and_sharded_with_torchrun(cohort):
    """``localize`` on the per-breast run: every malignant test unit with a mask is scored against it; under
    torchrun (2 CPU processes) the cases are shared out and the gathered result is the same."""
    import os
    import subprocess
    import sys

    from Training.localize import localize

    root, manifest, _, _ = cohort
    run = root / "run"
    if not (run / "run.json").is_file():
        pytest.skip("needs the run of test_breasts_preprocess_and_fit_with_the_unit_in_the_model_file")
    one = localize(run, "test", device="cpu")
    with_mask = [u for u in read_units(manifest) if u.case.split == "test" and u.lesion_truth == "mask"]
    assert one["masks"]["malignant"]["coam"]["inside"]["n"] == len(with_mask) == 1  # NACT_01 (ISPY2: a box in JSON)
    cases_one = (run / "localize" / "cases.csv").read_text()
    (run / "localize" / "summary.json").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, "-m", "Training.cli", "localize", "--run-dir", str(run), "--split", "test",
                           "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600,
                          cwd=publiccohorts.ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sharded = json.loads((run / "localize" / "summary.json").read_text())
    assert sharded["masks"] == json.loads(json.dumps(one["masks"]))
    assert (run / "localize" / "cases.csv").read_text() == cases_one


def test_a_manifest_of_breasts_is_not_preprocessed_as_whole_studies(cohort, tmp_path, capsys):
    from Training.cli import main

    _, manifest, _, _ = cohort
    assert main(["preprocess", "--manifest", str(manifest), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("manifest.csv: lists breasts (one row per breast): preprocess it with --unit breast")
    assert not (tmp_path / "c").exists()
