"""Training end to end on a tiny phantom cohort: every method, resume after SIGKILL, torchrun DDP,
evaluate / localize / compare / export. Sizes: phantoms 96x64x40, input 64x48x32, width 0.125."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from BreastCMSLLib.cohort.metrics import point_metrics
from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.header import read_model_metadata
from BreastCMSLLib.network.modelfile import load_model
from BreastCMSLLib.pipeline.analyze import analyze_case
from BreastCMSLLib.pipeline.preprocess import load_case
from Training.cache import open_cache, preprocess_cohort
from Training.cohort import synth_cohort
from Training.data import VolumeSource
from Training.evaluate import compare, evaluate, export, predict_split
from Training.localize import localize
from Training.methods import METHODS
from Training.trainer import FitConfig, fit

ROOT = Path(__file__).resolve().parents[1]
INPUT = (64, 48, 32)
FIT = {"epochs": 2, "batch_size": 4, "width_factor": 0.125, "device": "cpu", "seed": 3}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    synth_cohort(root / "cohort", 18, seed=5, shape=(96, 64, 40), workers=2)
    report = preprocess_cohort(root / "cohort" / "manifest.csv", root / "cache", PreprocessConfig(input_size=INPUT),
                               workers=2, progress=False)
    assert not report.failed
    return root / "cache"


def fit_args(cache: Path, out: Path, method: str = "cmsl", **extra) -> list[str]:
    args = {**FIT, **extra}
    cmd = ["fit", "--cache", str(cache), "--out", str(out), "--method", method]
    for k, v in args.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def predictions(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = read_csv(run / "eval" / "predictions.csv")
    return np.array([int(r["label"]) for r in rows]), np.array([float(r["probability"]) for r in rows])


@pytest.fixture(scope="module")
def runs(cache_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    for method in METHODS:
        fit(FitConfig(cache=str(cache_dir), out=str(out / method), method=method, **FIT))
    return {m: out / m for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_evaluates_exports(runs, method, tmp_path):
    run = runs[method]
    log = read_csv(run / "log.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2] and all(np.isfinite(float(r["train_loss"])) for r in log)
    result = evaluate(run, "test", device="cpu", n_boot=200)
    y, p = predictions(run)
    assert result["n"] == len(y) >= 2 and set(y) == {0, 1}
    # metrics.json equals scikit-learn on the written predictions
    assert result["metrics"]["auc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    for k, v in point_metrics(y, p).items():
        assert result["metrics"][k]["value"] == pytest.approx(v, abs=1e-9)
    assert json.loads((run / "eval" / "metrics.json").read_text())["method"] == method
    assert (run / "eval" / "roc.png").stat().st_size > 0
    assert (run / "eval" / "cos_hist.png").is_file() == (method in ("cmsl", "nsl"))
    sha = export(run, tmp_path / f"{method}.safetensors", synthetic=True)
    cfg, provenance = read_model_metadata(tmp_path / f"{method}.safetensors")
    assert provenance["method"] == method and provenance["untrained"] is False and provenance["synthetic"] is True
    assert provenance["thresholds"]["probability"] == 0.5
    assert provenance["evaluation"]["metrics"]["auc"]["value"] == result["metrics"]["auc"]["value"]
    best = load_file(str(run / "model_best.safetensors"))
    exported = load_file(str(tmp_path / f"{method}.safetensors"))
    assert best.keys() == exported.keys() and all(torch.equal(best[k], exported[k]) for k in best)
    if method == "mil2d":  # the runtime cannot build the 2D MIL network and says so
        with pytest.raises(InputError, match="mil2d_resnet34"):
            load_model(tmp_path / f"{method}.safetensors")
    else:
        loaded = load_model(tmp_path / f"{method}.safetensors")
        assert loaded.sha256 == sha and loaded.config == cfg
        assert (loaded.config.aux_classes == 7) == (method == "dkmt")
        assert (loaded.config.pooling == "instance_max") == (method == "sparse_mil")
        assert loaded.info()["synthetic"] is True


def test_localize_matches_analyze_and_compare_table(runs, cache_dir, tmp_path):
    run = runs["cmsl"]
    summary = localize(run, "test", device="cpu")
    rows = read_csv(run / "localize" / "cases.csv")
    _, pred, _, _ = predict_split(run, "test", device="cpu")
    cases = [c for c in open_cache(cache_dir).cases if c.split == "test"]
    called = [c.subject_id for c, p in zip(cases, pred["probability"], strict=True) if p >= 0.5]
    assert [r["subject_id"] for r in rows] == called  # the cases the model calls malignant
    assert summary["coam_mm"]["n"] == summary["cam_mm"]["n"] == len(rows) >= 1
    d = np.array([float(r["coam_mm"]) for r in rows])
    assert summary["coam_mm"]["mean"] == pytest.approx(d.mean(), abs=1e-3)
    assert summary["coam_mm"]["std"] == pytest.approx(d.std(), abs=1e-3)
    # the peaks are exactly those `breastcmsl analyze` finds for that case
    case = next(c for c in cases if c.subject_id == rows[0]["subject_id"])
    a = analyze_case(load_case(case.case_dir), load_model(run / "model_best.safetensors"), device="cpu")
    assert [float(rows[0][f"coam_{x}"]) for x in "xyz"] == pytest.approx(a.coam_peak_lps, abs=1e-3)
    # the uint8 cache changes cos(theta) only by its quantization (analyze preprocesses in float)
    cos_cache = pred["cos_theta"][[c.subject_id for c in cases].index(case.subject_id)]
    assert abs(cos_cache - a.cos_theta) < 0.02
    assert [float(rows[0][f"cam_{x}"]) for x in "xyz"] == pytest.approx(a.cam_peak_lps, abs=1e-3)
    assert [float(rows[0][f"fine_{x}"]) for x in "xyz"] == pytest.approx(a.fine_peak_lps, abs=1e-3)
    assert summary["fine_mm"]["n"] == len(rows) and summary["maps"]["coam/node"]["mm"] == summary["coam_mm"]
    assert float(rows[0]["cam_mm"]) == pytest.approx(
        np.linalg.norm(np.subtract(a.cam_peak_lps, case.center_lps)), abs=1e-3)
    assert (run / "localize" / "montage.png").stat().st_size > 0
    for m in ("cmsl", "bce"):
        if not (runs[m] / "eval" / "metrics.json").is_file():
            evaluate(runs[m], "test", device="cpu", n_boot=200)
    text = compare([runs["cmsl"], runs["bce"]], tmp_path / "t.md")
    assert "| CMSL (ours) |" in text and "| BCE (3D ResNet34) |" in text
    with pytest.raises(InputError, match="2D MIL"):
        localize(runs["mil2d"], "test", device="cpu")


def cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "Training.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_sigkill_then_resume_is_bit_identical(cache_dir, tmp_path):
    opts = {"epochs": 3, "checkpoint_every": 2}  # 3 steps per epoch: the first checkpoint is mid-epoch
    whole = cli(fit_args(cache_dir, tmp_path / "whole", **opts))
    assert whole.wait() == 0, whole.stdout.read()
    killed = cli(fit_args(cache_dir, tmp_path / "killed", **opts))
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = json.loads(torch.load(ckpt, weights_only=True)["state"])
    assert state["epoch"] < 3, "the kill should land before the end of the run"
    assert not (tmp_path / "killed" / "model_last.safetensors").exists()
    resumed = cli([*fit_args(cache_dir, tmp_path / "killed", **opts), "--resume"])
    assert resumed.wait() == 0, resumed.stdout.read()
    a = weights_of(tmp_path / "whole" / "model_last.safetensors")
    b = weights_of(tmp_path / "killed" / "model_last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = [read_csv(tmp_path / run / "log.csv")[-1] for run in ("whole", "killed")]
    assert last[0]["val_loss"] == last[1]["val_loss"] and last[0]["val_auc"] == last[1]["val_auc"]


def test_torchrun_two_ranks_matches_single_process(cache_dir, tmp_path):
    opts = {"epochs": 2, "batch_size": 4}
    single = cli(fit_args(cache_dir, tmp_path / "single", **opts))
    assert single.wait() == 0, single.stdout.read()
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "Training.cli",
                          *fit_args(cache_dir, tmp_path / "ddp", **opts)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2
    one, two = read_csv(tmp_path / "single" / "log.csv"), read_csv(tmp_path / "ddp" / "log.csv")
    assert len(one) == len(two) == 2
    # same data, same global batch (2 ranks x 2): the runs differ only through per-rank BatchNorm statistics
    for r1, r2 in zip(one, two, strict=True):
        # (validation accuracy is not compared: on this tiny split one case moves it by 0.5)
        assert abs(float(r1["val_loss"]) - float(r2["val_loss"])) <= 0.25 * float(r1["val_loss"])
    assert (tmp_path / "ddp" / "model_last.safetensors").is_file() and (tmp_path / "ddp" / "checkpoint.pt").is_file()


def test_streamed_and_resident_batches_are_equal(cache_dir):
    cache = open_cache(cache_dir)
    cases = cache.split("train")
    resident = VolumeSource(cache, cases, torch.device("cpu"), resident_bytes=1 << 40)
    streamed = VolumeSource(cache, cases, torch.device("cpu"), resident_bytes=0)
    assert resident.resident is not None and streamed.resident is None
    order = [[3, 0], [1], [2, 4]]
    for (i1, b1), (i2, b2) in zip(resident.batches(order), streamed.batches(order), strict=True):
        assert i1 == i2
        torch.testing.assert_close(b1, b2, rtol=0, atol=0)
        np.testing.assert_array_equal(b1[0].numpy(), cache.load(cases[i1[0]].subject_id))


def test_init_from_trained_base_model(runs, cache_dir, tmp_path):
    fit(FitConfig(cache=str(cache_dir), out=str(tmp_path / "dkmt"), method="dkmt", init=str(runs["cmsl"]),
                  **{**FIT, "epochs": 1}))
    run = json.loads((tmp_path / "dkmt" / "run.json").read_text())
    assert run["not_initialized"] == ["aux_head.bias", "aux_head.weight"]  # everything else came from CMSL
    with pytest.raises(InputError, match="refusing to unpickle"):
        bad = tmp_path / "pickle.pt"
        torch.save({"a": torch.zeros(1)}, bad)
        fit(FitConfig(cache=str(cache_dir), out=str(tmp_path / "x"), init=str(bad), **FIT))
