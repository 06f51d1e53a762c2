"""The demo's tables and first screen: every interval contains the value shown with it (ECE and MCE: BCa with the
bias-corrected estimate, where the percentile interval can miss its own plug-in estimate), the headline has at
most 12 lines, and a stage prints one console line while its own output goes to the log."""

from __future__ import annotations

import re
import sys

import numpy as np

from BreastCMSLLib.cohort.metrics import bootstrap_metrics
from Training.compare import paired_bootstrap
from Training.delong import delong_test
from Training.demo import calibration_table, headline
from Training.evaluate import table_row
from Training.metrics import bootstrap_calibration, calibration_metrics, replicate_calibration
from Training.stages import Stages

CELL = re.compile(r"([-+]?\d+\.\d+) \[([-+]?\d+\.\d+), ([-+]?\d+\.\d+)\]")
N_BOOT = 1000


def cohort(seed: int, n: int = 48):
    """Labels and pre-sigmoid scores of a well-separated, overconfident model (scores x 3 of the true logit)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 1.5, n)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return label, 3.0 * logit


def results_of(label: np.ndarray, score: np.ndarray, temperature: float) -> dict:
    """The part of ``evaluate``'s result the demo's tables read."""
    return {"metrics": bootstrap_metrics(label, 1 / (1 + np.exp(-score)), n_boot=N_BOOT),
            "calibration": {"calibrated": True, "temperature": temperature, "n_val": 23,
                            "before": bootstrap_calibration(label, score, 1.0, N_BOOT),
                            "after": bootstrap_calibration(label, score, temperature, N_BOOT)}}


def cells(text: str) -> list[tuple[float, float, float]]:
    return [tuple(map(float, m)) for m in CELL.findall(text)]


def test_every_interval_in_the_demo_tables_contains_its_value():
    missed_by_percentile = 0
    for seed in range(6):
        label, score = cohort(seed)
        results = {"cmsl": results_of(label, score, 3.0), "bce": results_of(label, score + 0.5, 2.5)}
        tables = "\n".join([table_row(m, r["metrics"], r["calibration"]) for m, r in results.items()]
                           + [calibration_table(results)])
        found = cells(tables)
        assert len(found) == 2 * 7 + 2 * 8  # Table 1: 5 metrics + 2 ECE per row; calibration: 8 per row
        for value, low, high in found:
            assert low <= value <= high, (seed, value, low, high)
        # what the percentile interval of the plug-in ECE would have shown
        idx = np.random.default_rng(0).integers(0, len(label), (N_BOOT, len(label)))
        for t in (1.0, 3.0):
            ece = replicate_calibration(label, score, idx, t)["ece"]
            missed_by_percentile += not (np.percentile(ece, 2.5) <= calibration_metrics(label, score, t)["ece"]
                                         <= np.percentile(ece, 97.5))
    assert missed_by_percentile > 0  # the check above is one the old intervals failed


def test_headline_has_at_most_12_lines_and_its_intervals_contain_their_values(tmp_path):
    label, score = cohort(7)
    other = score + np.random.default_rng(1).normal(0, 2, score.size)
    res = {"cmsl": results_of(label, score, 3.0), "bce": results_of(label, other, 2.0)}
    d = delong_test(label, score, other)
    summary = {
        "auc": {m: r["metrics"]["auc"]["value"] for m, r in res.items()},
        "auc_ci": {m: [r["metrics"]["auc"]["ci_low"], r["metrics"]["auc"]["ci_high"]] for m, r in res.items()},
        "calibration": {m: {"ece_after": r["calibration"]["after"]["ece"]} for m, r in res.items()},
        "paired_auc_difference": {"methods": ["cmsl", "bce"], "n": 48, "n_malignant": int(label.sum()),
                                  "difference": d.difference, "delong": {"p": d.p},
                                  "bootstrap": paired_bootstrap(label, score, other, N_BOOT)},
        "localization": {"fine_mm": {"mean": 31.2, "std": 12.0, "median": 30.0, "n": 19}}}
    text = headline(summary, tmp_path / "demo")
    lines = text.splitlines()
    assert len(lines) <= 12 and lines[-1].startswith(f"report: {tmp_path / 'demo' / 'report.md'}")
    found = cells(text)
    assert len(found) == 2 * 2 + 1  # AUC and ECE per method, the paired difference
    for value, low, high in found:
        assert low <= value <= high
    assert "DeLong p = " in text and "31.2 ± 12.0 mm (n = 19)" in text


def test_a_stage_prints_one_line_and_logs_its_output(tmp_path, capsys):
    def noisy(n: int) -> int:
        for k in range(n):
            print(f"epoch={k}")
        print("a warning", file=sys.stderr)
        return n

    stage = Stages("demo", log=tmp_path / "log.txt")
    assert stage("fit cmsl", noisy, 50) == 50
    out = capsys.readouterr()
    assert re.fullmatch(r"\[demo\] fit cmsl \.\.\. \d+\.\d s\n", out.out) and out.err == ""
    log = (tmp_path / "log.txt").read_text()
    assert "epoch=49" in log and "a warning" in log
