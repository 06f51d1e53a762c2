"""``breastcmsl-train localization-study`` at a tiny size: the whole pipeline and the summary's keys (not
its numbers); the phantom's "spread" lesion placement; a user mistake exits 2 with one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.phantom.parameters import PhantomConfig, draw_parameters
from BreastCMSLLib.phantom.synth import make_case

from .conftest import run_cli

SUMMARY_KEYS = {"coam_mm", "cam_mm", "difference_mm", "wilcoxon_p", "feature_grid", "feature_spacing_mm", "floor_mm",
                "config", "fine_map", "maps", "validation"}


def test_tiny_study_writes_the_report_and_the_summary_keys(tmp_path):
    out = tmp_path / "study"
    proc = run_cli("localization-study", "--out", out, "--input-size", 64, 48, 32, "--spacing", 4, 4, 4, "--n", 12,
                   "--epochs", 1, "--device", "cpu", "--seed", 3, "--workers", 1, module="Training.cli")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    for key in ("coam_mm", "cam_mm"):
        assert set(summary[key]) == {"mean", "std", "median", "n"}
    assert set(summary["difference_mm"]) == {"mean", "ci_low", "ci_high"}
    assert summary["feature_grid"] == [2, 2, 1]  # 64 x 48 x 32 / 32, rounded up
    assert summary["feature_spacing_mm"] == [128.0, 128.0, 128.0]
    assert summary["config"]["n_cases"] == 12 and summary["config"]["input_size"] == [64, 48, 32]
    with open(out / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # every test case (30 % of 12) has a lesion centre
    called = [r for r in rows if float(r["probability"]) >= 0.5]
    assert summary["coam_mm"]["n"] == summary["cam_mm"]["n"] == len(called)
    for r in rows:  # the distances are those of the listed points
        centre = [float(r[f"centre_{a}"]) for a in "xyz"]
        coam = [float(r[f"coam_{a}"]) for a in "xyz"]
        assert float(r["coam_mm"]) == pytest.approx(np.linalg.norm(np.subtract(coam, centre)), abs=2e-3)
    text = (out / "localization.md").read_text()
    assert "| paper (Luo et al. 2019) | 18.26 ± 13.65 | 39.84 ± 8.82 | 85 |" in text
    assert (out / "montage.png").stat().st_size > 0
    again = run_cli("localization-study", "--out", out, "--input-size", 64, 48, 32, "--spacing", 4, 4, 4, "--n", 12,
                    "--epochs", 1, "--device", "cpu", "--seed", 3, "--workers", 1, module="Training.cli")
    assert again.returncode == 0, again.stderr
    assert "[study] fit: kept" in again.stdout  # a rerun keeps the finished fit and reproduces the summary
    rerun = json.loads((out / "summary.json").read_text())
    assert {k: rerun[k] for k in ("coam_mm", "cam_mm", "floor_mm")} == {k: summary[k] for k in ("coam_mm", "cam_mm",
                                                                                             "floor_mm")}


def test_a_user_mistake_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "study"
    proc = run_cli("localization-study", "--out", out, "--n", 3, module="Training.cli")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--n" in proc.stderr
    assert not out.exists()


def test_spread_lesions_lie_deep_in_either_breast_and_keep_the_other_parameters():
    shape = (72, 48, 30)
    sides, moved = set(), 0
    for seed in range(12):
        spread = make_case(seed, PhantomConfig(shape=shape, lesion_placement="spread"))
        tissue = draw_parameters(seed, PhantomConfig())
        assert draw_parameters(seed, PhantomConfig(lesion_placement="spread"))["scores"] == tissue["scores"]
        centre = spread.truth["center_lps"]
        index = spread.lesion_mask.TransformPhysicalPointToIndex(centre)
        assert spread.lesion_mask[index] == 1  # the centre is lesion
        assert spread.breast_mask[index] == 1  # inside the breast
        sides.add(spread.truth["side"])
        default = make_case(seed, PhantomConfig(shape=shape))
        moved += np.linalg.norm(np.subtract(default.truth["center_lps"], centre)) > 5.0
        assert spread.truth["lesion_placement"] == "spread"
    assert sides == {"left", "right"}
    assert moved >= 6
    tissue_label = sitk.GetArrayViewFromImage(default.tissue)
    assert tissue_label.max() > 0


def test_map_evidence_sees_the_activations_coam_is_built_from(tiny_case, tiny_model_path):
    import torch

    from BreastCMSLLib.network.attention import coam
    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.analyze import analyze_case
    from BreastCMSLLib.pipeline.preprocess import load_case
    from Training.mapevidence import case_evidence, last_block_activations, rank_of

    loaded = load_model(tiny_model_path)
    a = analyze_case(load_case(tiny_case), loaded, device="cpu")
    out, pre = last_block_activations(loaded, a.prep.array, "cpu")
    assert torch.allclose(torch.relu(pre), out.features[0].float(), atol=1e-5)  # x = ReLU(pre): what COAM uses
    assert bool((pre < 0).any())
    values = torch.tensor([[[3.0]], [[5.0]]])
    assert rank_of(values, (1, 0, 0)) == 1 and rank_of(values, (0, 0, 0)) == 2
    e = case_evidence("c", loaded, a, (0, 0, 0), "cpu")
    assert e["cells"] == 4  # 64 x 48 x 32 -> 2 x 2 x 1
    assert e["rank_coam"] == rank_of(coam(out.features.float())[0].cpu(), (0, 0, 0))
    assert 1 <= e["rank_cam"] <= 4 and 0.0 < e["zero_fraction"] < 1.0
