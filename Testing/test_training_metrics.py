"""Training metrics against scikit-learn, bootstrap CIs, and the manifest's seeded stratified split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from BreastCMSLLib.cohort.manifest import Case, assign_splits, read_manifest, write_manifest
from BreastCMSLLib.cohort.metrics import bootstrap_metrics, point_metrics, replicate_metrics
from BreastCMSLLib.errors import InputError


def sklearn_metrics(y, p):
    pred = (p >= 0.5).astype(int)
    return {"accuracy": accuracy_score(y, pred), "sensitivity": recall_score(y, pred),
            "specificity": recall_score(y, pred, pos_label=0), "f1": f1_score(y, pred),
            "auc": roc_auc_score(y, p)}


def test_point_metrics_equal_sklearn_and_known_values():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.4, 0.2, 0.5, 0.1, 0.3, 0.5])  # p = 0.5 counts as malignant
    m = point_metrics(y, p)
    # by hand: predictions 1,1,0,0,1,0,0,1 -> TP 3, FN 1, TN 3, FP 1
    assert m["accuracy"] == pytest.approx(6 / 8, abs=1e-12)
    assert m["sensitivity"] == pytest.approx(3 / 4, abs=1e-12)
    assert m["specificity"] == pytest.approx(3 / 4, abs=1e-12)
    assert m["f1"] == pytest.approx(0.75, abs=1e-12)
    # AUC by brute force over all (malignant, benign) pairs, a tie counting one half
    pos, neg = p[y == 1], p[y == 0]
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert m["auc"] == pytest.approx(brute, abs=1e-12)
    rng = np.random.default_rng(7)
    for _ in range(5):
        y = rng.integers(0, 2, 60)
        p = np.round(rng.random(60), 2)  # ties included
        ours, ref = point_metrics(y, p), sklearn_metrics(y, p)
        for k in ref:
            assert abs(ours[k] - ref[k]) <= 1e-9, k


def test_bootstrap_replicates_equal_sklearn_and_ci_brackets_value():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    p = np.clip(0.35 * y + rng.random(40) * 0.65, 0, 1).round(2)
    idx = rng.integers(0, 40, (50, 40))
    rep = replicate_metrics(y, p, idx)
    for b in range(50):
        yb, pb = y[idx[b]], p[idx[b]]
        if len(np.unique(yb)) < 2:
            assert np.isnan(rep["auc"][b])
            continue
        ref = sklearn_metrics(yb, pb)
        for k in ref:
            assert abs(rep[k][b] - ref[k]) <= 1e-9, (k, b)
    ci = bootstrap_metrics(y, p, n_boot=500, seed=1)
    assert ci == bootstrap_metrics(y, p, n_boot=500, seed=1)  # seeded
    for k, v in ci.items():
        assert v["ci_low"] <= v["value"] <= v["ci_high"], k
        assert v["value"] == pytest.approx(sklearn_metrics(y, p)[k], abs=1e-9)


def test_split_has_paper_proportions_stratified_and_seeded(tmp_path):
    n = 1715
    labels = (np.arange(n) % 5 < 2).astype(int)  # 40 % malignant
    cases = [Case(f"s{i}", int(labels[i]), "", tmp_path) for i in range(n)]
    a = assign_splits(cases, seed=4)
    counts = {s: sum(c.split == s for c in a) for s in ("train", "val", "test")}
    assert counts == {"train": 1204, "val": 165, "test": 346}
    for s in counts:
        frac = np.mean([c.label for c in a if c.split == s])
        assert abs(frac - 0.4) < 0.01, s
    assert [c.split for c in a] == [c.split for c in assign_splits(cases, seed=4)]
    assert [c.split for c in a] != [c.split for c in assign_splits(cases, seed=5)]
    # given splits are kept; the manifest round-trips with paths relative to its folder
    fixed = [Case("x", 1, "val", tmp_path / "cases" / "x", 4, (1.0, -2.0, 3.5)), *cases[:20]]
    write_manifest(tmp_path / "m.csv", assign_splits(fixed, seed=0))
    back = read_manifest(tmp_path / "m.csv")
    assert back[0] == Case("x", 1, "val", (tmp_path / "cases" / "x").resolve(), 4, (1.0, -2.0, 3.5))
    assert "cases/x" in (tmp_path / "m.csv").read_text()


def test_manifest_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("subject_id,label,split,case_dir\na,1,train,a\nb,2,,b\n")
    with pytest.raises(InputError, match=r"bad\.csv, line 3: label must be 0 \(benign\) or 1"):
        read_manifest(bad)
    bad.write_text("subject,label\n")
    with pytest.raises(InputError, match="missing manifest columns"):
        read_manifest(bad)
