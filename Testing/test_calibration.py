"""Calibration: ECE/MCE/Brier/NLL against MONAI and scikit-learn, temperature fitting against a known T,
operating points against brute force, the model file's calibration, analyze's fields, the refusal of an
unusable validation split, and Table 1 unchanged by calibration on a trained run."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.metrics import brier_score_loss, log_loss

from BreastCMSLLib.cohort.metrics import METRICS
from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.calibration import Calibration, OperatingPoint, ScoreMetrics, operating_line, score
from BreastCMSLLib.network.modelfile import load_model, save_model
from BreastCMSLLib.pipeline.analyze import analyze_case
from BreastCMSLLib.pipeline.output import result_dict
from BreastCMSLLib.pipeline.preprocess import load_case
from Testing.conftest import run_cli
from Training.cache import preprocess_cohort
from Training.calibration import UnusableSplitError, check_split, fit_temperature, operating_point
from Training.cohort import synth_cohort
from Training.evaluate import compare, evaluate, export, predict_split
from Training.metrics import bootstrap_calibration, calibration_metrics, replicate_calibration, shown
from Training.runfiles import read_run_calibration
from Training.trainer import FitConfig, fit

INPUT = (64, 48, 32)


def sample(n: int, t_true: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores z ~ N(0, 4^2) and labels drawn with P(y = 1) = sigmoid(z / t_true)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    return z, (rng.random(n) < 1 / (1 + np.exp(-z / t_true))).astype(int)


def test_calibration_metrics_match_monai_and_sklearn():
    z, y = sample(400, 2.5, 0)
    for t in (1.0, 2.5):
        ours = calibration_metrics(y, z, t)
        p = 1 / (1 + np.exp(-z / t))
        pt, yt = torch.tensor(p).view(1, 1, -1), torch.tensor(y, dtype=torch.float64).view(1, 1, -1)
        for key, reduction in (("ece", "expected"), ("mce", "maximum")):
            monai = CalibrationErrorMetric(num_bins=15, calibration_reduction=reduction)(pt, yt)
            assert ours[key] == pytest.approx(float(monai), abs=1e-6), key
        assert ours["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        assert ours["nll"] == pytest.approx(log_loss(y, p), abs=1e-9)
    # by hand: p = 0.1 (y 0), 0.1 (y 1), 0.9 (y 1) -> bins 1 and 13: |0.1 - 0.5| * 2/3 + |0.9 - 1| / 3
    hand = calibration_metrics(np.array([0, 1, 1]), np.log(np.array([1 / 9, 1 / 9, 9])))
    assert hand["ece"] == pytest.approx(0.4 * 2 / 3 + 0.1 / 3, abs=1e-12)
    assert hand["mce"] == pytest.approx(0.4, abs=1e-12)
    # each bootstrap replicate equals the metrics of its resampled cases
    idx = np.random.default_rng(1).integers(0, len(y), (5, len(y)))
    rep = replicate_calibration(y, z, idx, 2.0)
    for b in range(5):
        direct = calibration_metrics(y[idx[b]], z[idx[b]], 2.0)
        for key, value in direct.items():
            assert rep[key][b] == pytest.approx(value, abs=1e-12)
    ci = bootstrap_calibration(y, z, 2.0, n_boot=300)
    assert all(ci[k]["ci_low"] <= shown(ci[k])["value"] <= ci[k]["ci_high"] for k in ci)


def test_temperature_recovers_a_known_temperature_and_minimizes_nll():
    z, y = sample(20000, 4.0, 2)
    t = fit_temperature(z, y)
    assert t == pytest.approx(4.0, rel=0.06)
    nll = [calibration_metrics(y, z, u)["nll"] for u in (t / 1.05, t, t * 1.05)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
    assert calibration_metrics(y, z, t)["ece"] < calibration_metrics(y, z, 1.0)["ece"]


def brute_force(z: np.ndarray, y: np.ndarray, kind: str, target: float) -> float:
    """The score threshold of a rule by trying every case's score."""
    rates = []
    for c in np.unique(z):
        pred = z >= c
        rates.append((c, pred[y == 1].mean(), (~pred)[y == 0].mean()))
    if kind == "sensitivity":
        return max(c for c, sens, _ in rates if sens >= target)
    return min(c for c, _, spec in rates if spec >= target)


@pytest.mark.parametrize("rule", ["sensitivity=0.9", "specificity=0.8", "sensitivity=0.5"])
def test_operating_point_matches_brute_force(rule):
    z, y = sample(60, 1.0, 3)
    t = 3.0
    op = operating_point(z, y, t, rule, "val", n_boot=200)
    kind, target = rule.split("=")
    c = brute_force(z, y, kind, float(target))
    assert op.threshold == pytest.approx(1 / (1 + math.exp(-c / t)), abs=1e-12)
    pred = 1 / (1 + np.exp(-z / t)) >= op.threshold
    assert op.sensitivity == pytest.approx(pred[y == 1].mean(), abs=1e-12)
    assert op.specificity == pytest.approx((~pred)[y == 0].mean(), abs=1e-12)
    assert (op.sensitivity if kind == "sensitivity" else op.specificity) >= float(target)
    assert op.sensitivity_ci[0] <= op.sensitivity <= op.sensitivity_ci[1]
    with pytest.raises(InputError, match="operating point"):
        operating_point(z, y, t, "accuracy=0.9", "val")


def test_unusable_split_is_refused_with_counts():
    with pytest.raises(UnusableSplitError, match=r"the val split has 9 cases \(4 malignant, 5 benign\)"):
        check_split(np.array([1] * 4 + [0] * 5), "val", "runs/x")
    with pytest.raises(UnusableSplitError, match=r"12 cases \(0 malignant, 12 benign\)"):
        check_split(np.zeros(12, int), "val", "runs/x")
    check_split(np.array([1] * 5 + [0] * 5), "val", "runs/x")


def calibrated_copy(path: Path, out: Path, cal: Calibration) -> Path:
    loaded = load_model(path)
    save_model(out, loaded.model, loaded.config, loaded.provenance, cal)
    return out


CAL = Calibration(temperature=2.0, fitted=True, n_val=40, n_val_malignant=20,
                  before=ScoreMetrics(0.2, 0.4, 0.2, 0.9), after=ScoreMetrics(0.04, 0.1, 0.15, 0.45),
                  operating_point=OperatingPoint("sensitivity=0.9", 0.3, 0.9, (0.75, 1.0), 0.7, (0.5, 0.85)))


def test_model_file_carries_calibration_and_old_files_read_uncalibrated(tiny_model_path, tmp_path):
    plain = load_model(tiny_model_path)
    assert plain.calibration == Calibration() and not plain.calibration.fitted
    assert operating_line(plain.calibration).startswith("uncalibrated")
    path = calibrated_copy(tiny_model_path, tmp_path / "cal.safetensors", CAL)
    assert load_model(path).calibration == CAL
    assert operating_line(CAL) == "at this model's threshold 0.3: sensitivity 0.90, specificity 0.70 on 40 " \
                                  "validation cases"
    # strict parsing: an unknown field or T <= 0 is refused with the file named
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    for bad in (CAL.to_json().replace('"temperature": 2.0', '"temperature": -1.0'),
                CAL.to_json().replace('"fitted"', '"extra": 1, "fitted"')):
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "calibration": bad})
        with pytest.raises(InputError, match=r"bad\.safetensors: has unreadable BreastCMSL metadata"):
            load_model(tmp_path / "bad.safetensors")


def test_analyze_reports_calibrated_probability_and_operating_point(tiny_model_path, tiny_case, tmp_path):
    path = calibrated_copy(tiny_model_path, tmp_path / "cal.safetensors", CAL)
    loaded = load_model(path)
    a = analyze_case(load_case(tiny_case), loaded, device="cpu")
    z = loaded.config.s * a.cos_theta  # CMSL: the score is s cos(theta)
    assert a.probability_uncalibrated == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-6)
    assert a.probability == pytest.approx(1 / (1 + math.exp(-z / 2.0)), abs=1e-6)
    assert a.threshold == 0.3 and a.prediction == ("malignant" if a.probability >= 0.3 else "benign")
    r = result_dict(a, {})
    assert r["calibrated"] is True and r["temperature"] == 2.0 and r["threshold"] == 0.3
    assert r["operating_point"]["sensitivity"] == 0.9 and r["operating_point"]["n_validation"] == 40
    assert r["operating_line"] == operating_line(CAL)
    # the CLI prints the same fields; an uncalibrated model says so, with null validation figures
    proc = run_cli("analyze", tiny_case, "--model", tiny_model_path, "--out", tmp_path / "out", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["calibrated"] is False and printed["operating_line"].startswith("uncalibrated")
    assert printed["probability"] == pytest.approx(printed["probability_uncalibrated"], abs=1e-6)
    assert printed["threshold"] == 0.5
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert written["operating_point"]["sensitivity"] is None and written["temperature"] == 1.0


def test_score_is_the_pre_sigmoid_value(tiny_model_path):
    loaded = load_model(tiny_model_path)
    out = loaded.model(torch.rand(2, 6, *INPUT))
    assert torch.allclose(score(out, loaded.config), loaded.config.s * out.cos_theta)


# -- a trained run whose validation split can calibrate -------------------------------------------------
SPLITS = ["train"] * 4 + ["val"] * 6 + ["test"] * 2  # per class: 8 train, 12 val, 4 test cases


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calrun")
    synth_cohort(root / "cohort", 24, seed=11, shape=(96, 64, 40), workers=2)
    manifest = root / "cohort" / "manifest.csv"
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    seen = {"0": 0, "1": 0}
    for row in rows:
        row["split"] = SPLITS[seen[row["label"]]]
        seen[row["label"]] += 1
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report = preprocess_cohort(manifest, root / "cache", PreprocessConfig(input_size=INPUT), workers=2, progress=False)
    assert not report.failed
    row = fit(FitConfig(cache=str(root / "cache"), out=str(root / "run"), method="cmsl", epochs=1, batch_size=4,
                        width_factor=0.125, device="cpu", seed=1))
    assert row["calibration"]["n_val"] == 12  # fit calibrated at its end
    return root / "run"


def test_fit_calibrates_and_table1_is_unchanged(run, tmp_path):
    data = json.loads((run / "calibration.json").read_text())
    cal = Calibration.from_json(json.dumps(data["calibration"]))
    cases, pred, _, _ = predict_split(run, "val", device="cpu")
    assert data["validation"]["subject_id"] == [c.subject_id for c in cases]
    assert np.allclose(data["validation"]["score"], pred["score"], atol=1e-5)
    assert cal.temperature == pytest.approx(fit_temperature(pred["score"], pred["label"]), rel=1e-4)
    assert cal.after.nll <= cal.before.nll + 1e-9
    calibrated = evaluate(run, "test", device="cpu", n_boot=200)
    shutil.move(run / "calibration.json", tmp_path / "calibration.json")
    try:
        plain = evaluate(run, "test", device="cpu", n_boot=200)
    finally:
        shutil.move(tmp_path / "calibration.json", run / "calibration.json")
    for k in METRICS:  # AUC, accuracy, sensitivity, specificity, F1 and their CIs: identical
        assert calibrated["metrics"][k] == plain["metrics"][k], k
    assert plain["calibration"]["after"] is None and calibrated["calibration"]["calibrated"] is True
    assert calibrated["calibration"]["before"] == plain["calibration"]["before"]
    with open(run / "eval" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    z, y = np.array([float(r["score"]) for r in rows]), np.array([int(r["label"]) for r in rows])
    after = calibrated["calibration"]["after"]["ece"]["value"]
    assert after == pytest.approx(calibration_metrics(y, z, cal.temperature)["ece"], abs=1e-5)
    assert (run / "eval" / "reliability.png").stat().st_size > 0
    evaluate(run, "test", device="cpu", n_boot=200)
    table = compare([run], tmp_path / "t.md")
    shown_after = shown(calibrated["calibration"]["after"]["ece"])["value"]  # the bias-corrected ECE
    assert "| ECE | ECE (calibrated) |" in table and f"{shown_after:.3f} [" in table


def test_export_stores_calibration_and_operating_point(run, tmp_path):
    sha = export(run, tmp_path / "m.safetensors", operating_point="sensitivity=0.9")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.sha256 == sha
    cal, op = loaded.calibration, loaded.calibration.operating_point
    data = json.loads((run / "calibration.json").read_text())
    z, y = np.array(data["validation"]["score"]), np.array(data["validation"]["label"])
    pred = 1 / (1 + np.exp(-z / cal.temperature)) >= op.threshold
    assert cal.fitted and op.rule == "sensitivity=0.9" and op.sensitivity >= 0.9
    assert op.sensitivity == pytest.approx(pred[y == 1].mean())
    assert op.specificity == pytest.approx((~pred)[y == 0].mean())
    assert loaded.provenance["thresholds"]["probability"] == op.threshold
    export(run, tmp_path / "m2.safetensors")
    default = load_model(tmp_path / "m2.safetensors").calibration
    assert default.operating_point.threshold == 0.5 and default.temperature == cal.temperature


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_calibrate_refuses_a_small_validation_split_and_leaves_the_run(run, tmp_path):
    """A run whose cache's validation split has 2 cases: one line, exit 2, nothing in the run changes."""
    small = tmp_path / "run"
    shutil.copytree(run, small)
    spec = json.loads((small / "run.json").read_text())
    cache = tmp_path / "cache"
    shutil.copytree(spec["fit"]["cache"], cache)
    with open(cache / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    for label in "01":  # keep one case of each class in val, move the rest to train
        for r in [r for r in rows if r["split"] == "val" and r["label"] == label][1:]:
            r["split"] = "train"
    with open(cache / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (small / "calibration.json").unlink()
    before = tree_digest(small)
    proc = run_cli("calibrate", "--run", small, "--cache", cache, "--device", "cpu", module="Training.cli")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(small) in lines[0]
    assert "the val split has 2 cases (1 malignant, 1 benign)" in lines[0]
    assert tree_digest(small) == before
    proc = run_cli("export", "--run", small, "--out", tmp_path / "x.safetensors", "--operating-point",
                   "sensitivity=0.9", module="Training.cli")
    assert proc.returncode == 2 and "is not calibrated" in proc.stderr and not (tmp_path / "x.safetensors").exists()
    # a calibration of another best model (the run trained again) is refused, not silently applied
    shutil.copy(run / "calibration.json", small / "calibration.json")
    shutil.copy(small / "model_last.safetensors", small / "model_best.safetensors")
    with pytest.raises(InputError, match="fitted for another model_best"):
        read_run_calibration(small)
