"""``compare-methods``: per-seed splits over one cache, paired per-seed statistics against independent
references, the pooled t-interval against a textbook example, and a small end-to-end run that is reused."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from BreastCMSLLib.errors import InputError
from Training.cache import open_cache, synthetic_cache
from Training.cli import main
from Training.compare import CompareConfig, check, compare_methods, paired_bootstrap, pooled, seed_cache, verdict


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmpcache") / "cache"
    synthetic_cache(root, 100, (6, 32, 32, 32), seed=1)
    return root


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """40 cases: per seed 28 train, 4 validation (too few to calibrate: the runs stay uncalibrated), 8 test."""
    root = tmp_path_factory.mktemp("cmpsmall") / "cache"
    synthetic_cache(root, 40, (6, 32, 32, 32), seed=2)
    return root


def test_each_seed_splits_the_same_cases_again(cache_dir, tmp_path):
    base = open_cache(cache_dir)
    views = {s: open_cache(seed_cache(cache_dir, tmp_path / f"seed{s}", s)) for s in (0, 1)}
    tests = {s: {c.subject_id for c in v.split("test")} for s, v in views.items()}
    for v in views.values():
        assert {c.subject_id for c in v.cases} == {c.subject_id for c in base.cases}
        split = {n: v.split(n) for n in ("train", "val", "test")}
        assert [len(split[n]) for n in ("train", "val", "test")] == [70, 10, 20]  # the paper's 1204/165/346
        assert sum(c.label for c in split["test"]) == 10  # label-stratified
        sid = split["test"][0].subject_id
        assert np.array_equal(v.load(sid), base.load(sid))  # the entries are the cache's own
    assert tests[0] != tests[1]
    assert tests[0] == {c.subject_id for c in open_cache(seed_cache(cache_dir, tmp_path / "again", 0)).split("test")}


def test_pooled_matches_a_textbook_t_interval():
    # differences 1..5: mean 3, sd sqrt(2.5), t(0.975, 4 df) = 2.776 (tables), t = 3 / (sqrt(2.5) / sqrt(5))
    p = pooled([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert (p["mean"], p["sd"]) == pytest.approx((3.0, math.sqrt(2.5)))
    assert (p["ci_low"], p["ci_high"]) == pytest.approx((3 - half, 3 + half), abs=1e-6)
    assert p["p"] == pytest.approx(0.013236, abs=1e-5)  # two-sided p of t = 4.243 on 4 df
    assert math.isnan(pooled([0.1])["ci_low"])


def test_verdict_and_paired_bootstrap():
    assert verdict("CMSL - BCE", 0.01, 0.09, 0.01).startswith("CMSL - BCE: resolved, the first method's AUC is higher")
    assert "not resolved" in verdict("CMSL - BCE", -0.05, 0.09, 0.4)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 60)
    a, b = label + rng.normal(0, 0.7, 60), label + rng.normal(0, 1.5, 60)
    ci = paired_bootstrap(label, a, b, 2000)
    assert ci["ci_low"] < roc_auc_score(label, a) - roc_auc_score(label, b) < ci["ci_high"]
    assert paired_bootstrap(label, a, a, 200)["ci_low"] == paired_bootstrap(label, a, a, 200)["ci_high"] == 0.0


def test_bad_methods_and_seeds_are_refused():
    with pytest.raises(InputError, match="two or more distinct methods"):
        check(CompareConfig("c", "o", methods=("cmsl",)))
    with pytest.raises(InputError, match="two or more distinct methods"):
        check(CompareConfig("c", "o", methods=("cmsl", "svm")))
    with pytest.raises(InputError, match="distinct seeds"):
        check(CompareConfig("c", "o", seeds=()))


def read_scores(run) -> dict[str, tuple[int, float]]:
    with open(run / "eval" / "predictions.csv", newline="") as f:
        return {r["subject_id"]: (int(r["label"]), float(r["score"])) for r in csv.DictReader(f)}


def test_two_seeds_two_methods_end_to_end_and_reused(small_cache, tmp_path, capsys):
    out = tmp_path / "cmp"
    cfg = CompareConfig(str(small_cache), str(out), methods=("cmsl", "bce"), seeds=(0, 1), epochs=1, batch_size=8,
                        width_factor=0.125, device="cpu", n_boot=500)
    summary = compare_methods(cfg)
    for seed in (0, 1):
        a, b = read_scores(out / f"seed{seed}" / "cmsl"), read_scores(out / f"seed{seed}" / "bce")
        assert a.keys() == b.keys() and len(a) == 8  # the same test cases for both methods
        ids = sorted(a)
        y = [a[i][0] for i in ids]
        expected = roc_auc_score(y, [a[i][1] for i in ids]) - roc_auc_score(y, [b[i][1] for i in ids])
        row = summary["pairs"]["cmsl-bce"]["per_seed"][seed]
        assert row["difference"] == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= row["delong"]["p"] <= 1.0
    diffs = [r["difference"] for r in summary["pairs"]["cmsl-bce"]["per_seed"]]
    assert summary["pairs"]["cmsl-bce"]["pooled"]["mean"] == pytest.approx(np.mean(diffs))
    assert summary["methods"]["bce"]["sd"] == pytest.approx(np.std(summary["methods"]["bce"]["auc"], ddof=1))
    text = (out / "comparison.md").read_text()
    assert "CMSL - BCE: " in text and "resolved" in text and "fp32" in text
    model = out / "seed1" / "bce" / "model_best.safetensors"
    stamp = model.stat().st_mtime_ns
    capsys.readouterr()
    args = ["compare-methods", "--cache", str(small_cache), "--out", str(out), "--methods", "cmsl,bce", "--seeds", "2",
            "--epochs", "1", "--batch-size", "8", "--width-factor", "0.125", "--device", "cpu"]
    assert main(args) == 0  # the same runs from the command line: reused, not trained again
    assert model.stat().st_mtime_ns == stamp
    assert "epoch=" not in capsys.readouterr().out
