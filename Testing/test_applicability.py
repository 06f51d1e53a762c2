"""The training domain a model carries (issue 32): Mahalanobis distances against scikit-learn, the record in the
model file (size, damage), the envelope's plain reasons, the phases a model takes, the analysis's applicability and
the ``domain`` command's refusal of a small validation split."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.covariance import EmpiricalCovariance, LedoitWolf

from BreastCMSLLib.cohort.manifest import Case
from BreastCMSLLib.config import ModelConfig, PreprocessConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.domain import (
    COVERAGE,
    PART_COVERAGE,
    DomainRecord,
    Envelope,
    FeatureDensity,
    StudyGeometry,
    applicability,
    input_pattern,
    read_record,
)
from BreastCMSLLib.network.modelfile import load_model, save_model
from BreastCMSLLib.network.net import build_model
from BreastCMSLLib.pipeline.analyze import forward
from BreastCMSLLib.pipeline.model_phases import choose
from BreastCMSLLib.pipeline.preprocess import load_case, prepare
from BreastCMSLLib.run import AnalyzeRequest, run_analysis
from Testing.conftest import TINY_INPUT, run_cli
from Training.cache import create_cache
from Training.domain import fit_density, fit_pattern, measure_domain


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes of ``n`` vectors each in ``d`` dimensions with a correlated shared covariance."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / math.sqrt(d) + np.eye(d)
    x = rng.normal(size=(2 * n, d)) @ mix
    label = np.repeat([0, 1], n)
    x[label == 1] += 1.5
    return x, label


@pytest.mark.parametrize("shrinkage", [0.0, None])
def test_distances_match_sklearn(shrinkage):
    x, y = features(300, 12, 0)
    val, _ = features(40, 12, 1)
    density = fit_density(x, y, val, shrinkage)
    means = [x[y == k].mean(0) for k in (0, 1)]
    centred = x - np.stack(means)[y]
    estimator = EmpiricalCovariance if shrinkage == 0 else LedoitWolf
    ref = estimator(assume_centered=True).fit(centred)
    probe, _ = features(25, 12, 2)
    expected = np.stack([np.sqrt(ref.mahalanobis(probe - m)) for m in means], axis=1)
    np.testing.assert_allclose(density.distances(probe), expected, rtol=2e-4)
    np.testing.assert_allclose(density.score(probe), expected.min(1), rtol=2e-4)
    scores = density.score(val)  # the threshold: the smallest with >= 97.5 % of the validation cases inside
    assert np.mean(scores <= density.threshold) >= PART_COVERAGE
    assert np.mean(scores < density.threshold) < PART_COVERAGE


def test_pattern_density_standardizes_and_sets_its_threshold_out_of_fold():
    rng = np.random.default_rng(5)
    scale = np.array([0.01, 0.1, 1.0, 3.0, 0.5, 0.2])  # values of different units, as the pattern's are
    train, val = rng.normal(size=(80, 6)) * scale + 2.0, rng.normal(size=(12, 6)) * scale + 2.0
    density = fit_pattern(train, val)
    spread = train.std(0)
    ref = LedoitWolf().fit(train / spread)  # Ledoit-Wolf on the standardized training patterns
    probe = rng.normal(size=(9, 6)) * scale + 2.0
    np.testing.assert_allclose(density.score(probe), np.sqrt(ref.mahalanobis(probe / spread)), rtol=2e-4)
    # held out: the 12 validation patterns and each training pattern scored by a fit without its fold
    from sklearn.model_selection import KFold
    held = list(np.sqrt(ref.mahalanobis(val / spread)))
    for fit, out in KFold(5, shuffle=True, random_state=0).split(train):
        s = train[fit].std(0)
        held += list(np.sqrt(LedoitWolf().fit(train[fit] / s).mahalanobis(train[out] / s)))
    assert density.n_held_out == 92
    assert np.mean(np.array(held) <= density.threshold * (1 + 1e-5)) >= PART_COVERAGE
    assert np.mean(np.array(held) < density.threshold * (1 - 1e-5)) < PART_COVERAGE
    k, z = density.most_unusual(np.r_[2.0, 2.0, 2.0, 2.0 + 12 * spread[3], 2.0, 2.0])
    assert k == 3 and z == pytest.approx(12.0, rel=0.1)


def test_input_pattern_against_numpy():
    rng = np.random.default_rng(6)
    inside = np.zeros((8, 6, 4), bool)
    inside[:3] = True  # the mask in the first half along i, off centre
    base = rng.random(inside.sum())
    values = np.stack([base, base + 0.3 * rng.random(base.size), base])  # channel 3 repeats channel 1
    enhancement = tuple(tuple(np.quantile(v, (0.5, 0.9, 0.99))) for v in values)
    pattern = input_pattern(enhancement, values, inside)
    r12 = np.corrcoef(values[0], values[1])[0, 1]
    assert pattern[:9] == pytest.approx([q for e in enhancement for q in e])
    assert pattern[9] == pytest.approx(math.log(1 - r12)) and pattern[10] == pytest.approx(math.log(1e-3))
    assert pattern[12:] == pytest.approx((3 / 8, 1.0 / 8 - 0.5, 1.0))  # share, centre (i = 0..2) offset, balance


def pattern_density(study: StudyGeometry, n: int = 60) -> FeatureDensity:
    """An input-pattern density around ``study``'s pattern."""
    rng = np.random.default_rng(7)
    centre = np.asarray(study.pattern)
    return fit_pattern(centre + 0.01 * rng.normal(size=(n, centre.size)), centre + 0.01 * rng.normal(size=(12, 10)))


def record_of(density: FeatureDensity, study: StudyGeometry) -> DomainRecord:
    return DomainRecord(Envelope.of([study]), density, pattern_density(study), study.phases, study.phase_times_s)


STUDY = StudyGeometry((1.0, 1.0, 2.0), (340.0, 220.0, 160.0), "axial", "bilateral", (1, 2), 2, "all", (75.0, 150.0),
                      ((0.1, 0.3, 0.8), (0.1, 0.35, 0.85)), (0.1, 0.3, 0.8, 0.1, 0.35, 0.85, -2.3, 0.3, 0.0, 0.5))


def test_record_round_trip_and_size_at_the_papers_width():
    x, y = features(600, 512, 3)
    density = fit_density(x, y, x[:50])
    text = record_of(density, STUDY).to_json()
    assert len(text.encode()) <= 1_000_000  # the record adds at most 1 MB at 512 features
    back = DomainRecord.from_json(text)
    np.testing.assert_allclose(back.density.score(x[:7]), density.score(x[:7]), rtol=1e-6)
    assert back.envelope == record_of(density, STUDY).envelope and back.density.threshold == density.threshold


def test_envelope_reasons_in_plain_words():
    x, y = features(100, 4, 4)
    record = record_of(fit_density(x, y, x[:20]), STUDY)
    check = record.check(x[0])
    inside = applicability(check, STUDY)
    assert inside["in_domain"] is (check.score <= check.threshold)
    assert inside["reasons"][-1].startswith("input pattern distance 0.")
    odd = dataclasses.replace(STUDY, plane="sagittal", coverage="single", fov_mm=(180.0, 220.0, 160.0),
                              phase_times_s=(75.0, 400.0))
    out = applicability(check, odd)
    assert out["in_domain"] is False
    assert out["reasons"][:4] == ["sagittal acquisition; this model was trained on axial",
                                  "one breast; this model was trained on both breasts",
                                  "field of view 180 mm left-right, training 340 mm",
                                  "post-contrast phase 2 at 400 s, training 150 s"]
    far = record.check(x[0] + 100.0)
    ratio = far.score / far.threshold
    assert applicability(far, STUDY)["reasons"][0] == (f"feature distance {ratio:.2f} × its validation threshold "
                                                       "(unlike the training cases)")
    repeated = dataclasses.replace(STUDY, pattern=(*STUDY.pattern[:6], math.log(1e-3), *STUDY.pattern[7:]))
    out = applicability(check, repeated)
    assert out["in_domain"] is False and out["score"] > 1.0 and out["threshold"] == 1.0
    assert "(most unusual: the correlation of channels 1 and 2, -" in out["reasons"][-1]


def test_phase_choice():
    cfg = PreprocessConfig(phases=(1, 2), phase_times_s=(75.0, 150.0))
    used = choose(6, (60.0, 140.0, 220.0, 300.0, 380.0, 460.0), cfg, 2, "s", "m")
    assert (used.phases, used.rule) == ((1, 2), "nearest time")
    late = PreprocessConfig(phases=(1, 2), phase_times_s=(180.0, 440.0))
    assert choose(5, (100.0, 200.0, 300.0, 400.0, 500.0), late, 2, "s", "m").phases == (2, 4)
    by_number = choose(3, None, cfg, 2, "s", "m")
    assert by_number.phases == (1, 2) and by_number.rule == "phase number"
    with pytest.raises(InputError, match=r"needs 2 post-contrast phases \(1, 2 at 75, 150 s\); this study has 1"):
        choose(1, None, cfg, 2, "study.nrrd", "m")


@pytest.fixture(scope="module")
def two_phase_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=2, width_factor=0.125,
                      preprocess=PreprocessConfig(input_size=TINY_INPUT, phases=(2, 4), phase_times_s=(150.0, 300.0)))
    path = tmp_path_factory.mktemp("m2") / "two.safetensors"
    save_model(path, build_model(cfg), cfg, {"name": "two"})
    return path


def test_analysis_reports_phases_and_applicability(two_phase_model, tiny_case, tmp_path):
    loaded = load_model(two_phase_model)
    prep = prepare(load_case(tiny_case), loaded.config, "two")
    assert prep.study.phases == (2, 4) and prep.study.phase_rule == "nearest time"  # times.json: 75 .. 450 s
    feature = forward(loaded, prep.array, torch.device("cpu"))[0].pooled[0].numpy()
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(80, feature.size)) * 0.05 * (feature.std() + 1e-3)
    density = fit_density(feature + spread, np.repeat([0, 1], 40), feature + spread[:20])
    record = record_of(density, prep.study)
    model = tmp_path / "with_record.safetensors"
    save_model(model, loaded.model, loaded.config, {"name": "two"}, domain=record)
    result = run_analysis(AnalyzeRequest(model=model, out=tmp_path / "out", case_dir=tiny_case, device="cpu"))
    app = result["applicability"]
    assert result["phases_used"]["phases"] == [2, 4] and result["phases_used"]["of"] == 6
    assert app["feature_threshold"] == pytest.approx(density.threshold, rel=1e-6)
    assert app["feature_distance"] == pytest.approx(float(density.score(feature)[0]), rel=1e-3)
    pattern = record.pattern.score(np.asarray(prep.study.pattern))[0] / record.pattern.threshold
    assert app["score"] == pytest.approx(max(app["feature_distance"] / density.threshold, pattern), rel=1e-3)
    assert app["in_domain"] is (app["score"] <= 1.0 and len(app["reasons"]) == 2)
    on_disk = json.loads((tmp_path / "out" / "result.json").read_text())["applicability"]
    assert on_disk == app


def test_damaged_record_loads_with_unknown_applicability(two_phase_model, tiny_case, tmp_path):
    from safetensors import safe_open

    with safe_open(str(two_phase_model), framework="pt") as f:
        meta = dict(f.metadata())
    damaged = tmp_path / "damaged.safetensors"
    save_file(load_file(str(two_phase_model)), str(damaged), metadata={**meta, "domain": '{"version": 1, "dens'})
    loaded = load_model(damaged)
    assert loaded.domain is None and "damaged" in loaded.domain_problem
    result = run_analysis(AnalyzeRequest(model=damaged, out=tmp_path / "out", case_dir=tiny_case, device="cpu"))
    assert result["applicability"]["in_domain"] is None
    assert result["applicability"]["reasons"] == [loaded.domain_problem]
    x, y = features(40, 4, 8)
    older = json.loads(record_of(fit_density(x, y, x[:20]), STUDY).to_json()) | {"version": 1}
    assert read_record(json.dumps(older)) == (None, "the model file's training-domain record is of another version "
                                              "1; this release reads version 2: measure it again with "
                                              "`breastcmsl-train domain --run RUN`; applicability is unknown")


def test_too_few_phases_refused_in_one_line(tiny_model_path, tmp_path):
    from BreastCMSLLib.phantom.synth import synth_case

    case = tmp_path / "case"
    synth_case(case, seed=3, label=0, shape=(96, 64, 40))
    for k in (4, 5, 6):
        (case / f"post_{k}.nrrd").unlink()
    (case / "times.json").write_text(json.dumps({"post_s": [75, 150, 225], "injection_s": 0}))
    proc = run_cli("analyze", case, "--model", tiny_model_path, "--out", tmp_path / "out", "--device", "cpu")
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    line = proc.stderr.strip().splitlines()[-1]
    assert line.endswith("the model tiny takes 6 subtraction channels, these inputs give 3")


def small_run(tmp_path: Path, n_val: int) -> Path:
    """A run folder (run.json, model_best) over a cache of random volumes with study geometries: 30 train cases
    and ``n_val`` validation cases."""
    cfg = PreprocessConfig(input_size=(32, 32, 32))
    cases = [Case(f"c{n:03d}", n % 2, "train" if n < 30 else "val", tmp_path / "none") for n in range(30 + n_val)]
    cache = create_cache(tmp_path / "cache", cfg, cases)
    rng = np.random.default_rng(0)
    for case in cases:
        study = dataclasses.replace(STUDY, pattern=tuple(np.add(STUDY.pattern, rng.normal(0, 0.01, 10))))
        cache.write_entry(case, rng.integers(0, 200, (2, 32, 32, 32), dtype=np.uint8), study)
    run = tmp_path / "run"
    run.mkdir()
    model_cfg = ModelConfig(in_channels=2, width_factor=0.125, preprocess=cfg)
    save_model(run / "model_best.safetensors", build_model(model_cfg), model_cfg, {"method": "cmsl"})
    (run / "run.json").write_text(json.dumps({"fit": {"cache": str(tmp_path / "cache"), "batch_size": 4}}))
    return run


def test_domain_needs_ten_validation_cases_and_leaves_the_run(tmp_path):
    run = small_run(tmp_path, 6)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = run_cli("domain", "--run", run, "--device", "cpu", module="Training.cli")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "the val split has 6 cases; the training-domain threshold needs at least 10" in proc.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_domain_threshold_keeps_95_percent_of_validation(tmp_path):
    from Training.cache import open_cache
    from Training.data import VolumeSource
    from Training.domain import split_features
    from Training.runmodel import load_network

    run = small_run(tmp_path, 12)
    record = measure_domain(run, device="cpu")
    net, _, _ = load_network(run / "model_best.safetensors", torch.device("cpu"))
    cache = open_cache(tmp_path / "cache")
    val = split_features(net, VolumeSource(cache, cache.split("val"), torch.device("cpu"), int(1e9)))
    assert np.mean(record.density.score(val) <= record.density.threshold) >= PART_COVERAGE
    patterns = np.array([cache.study(c.subject_id).pattern for c in cache.split("val")])
    assert np.mean(record.pattern.score(patterns) <= record.pattern.threshold) >= COVERAGE
    assert record.envelope.fov_mm == ((340.0, 340.0), (220.0, 220.0), (160.0, 160.0))
    assert record.phases == (1, 2) and record.phase_times_s == (75.0, 150.0)


def test_faces_text_and_cohort_rows_carry_it():
    from BreastCMSLLib.cohort.table import ok_row, summary_text
    from BreastCMSLLib.panel.state import AnalysisResult
    from BreastCMSLLib.panel.text import result_text

    outside = {"in_domain": False, "score": 9.0, "threshold": 3.0,
               "reasons": ["sagittal acquisition; this model was trained on axial", "feature distance 3.00 × the "
                           "validation threshold (unlike the training cases)"]}
    output = {"probability": 0.02, "cos_theta": -0.1, "prediction": "benign", "label_fraction": 0.5,
              "mask_source": "t1", "device": "cpu", "precision": "fp32", "threshold": 0.5, "applicability": outside,
              "model": {"name": "m", "sha256": "0" * 64}, "coam_peak_lps": [0, 0, 0], "cam_peak_lps": [0, 0, 0],
              "fine_peak_lps": [0, 0, 0],
              "inputs": {"kind": "phases", "t1": None, "series": ["pre.nrrd", "post_1.nrrd"]},
              "timings": {"preprocess_s": 1.0}}
    text = result_text(AnalysisResult.from_output("case", output, {}))
    assert text["outside"] == "outside"
    assert text["applicability"] == ("outside what the model was trained on: sagittal acquisition; this model was "
                                     "trained on axial; feature distance 3.00 × the validation threshold (unlike the "
                                     "training cases)")
    inside = {**output, "applicability": {**outside, "in_domain": True, "reasons": ["feature distance 0.50 × the "
                                                                                      "validation threshold"]}}
    assert result_text(AnalysisResult.from_output("case", inside, {}))["outside"] == ""
    old = {k: v for k, v in output.items() if k != "applicability"}  # a result made before the check
    assert result_text(AnalysisResult.from_output("case", old, {}))["applicability"] == ""
    rows = [ok_row("a", output, 0), ok_row("b", inside, 1), ok_row("c", old, None)]
    assert [r["in_domain"] for r in rows] == ["false", "true", "unknown"]
    assert rows[0]["applicability_reasons"] == "; ".join(outside["reasons"])
    summary = summary_text(rows, {"name": "m", "path": "m.safetensors", "sha256": "0" * 64, "untrained": False})
    assert "Of 3 analyzed cases, 1 lie inside what the model was trained on, 1 outside" in summary
    assert "and 1 unknown" in summary


def test_preprocess_keeps_the_chosen_phases(tiny_case, tmp_path):
    from BreastCMSLLib.cohort.manifest import write_manifest
    from Training.cache import open_cache, preprocess_cohort

    short = tmp_path / "short"  # a study with one post-contrast phase: refused with its reason
    short.mkdir()
    for name in ("t1.nrrd", "pre.nrrd", "post_1.nrrd"):
        (short / name).symlink_to(tiny_case / name)
    write_manifest(tmp_path / "manifest.csv", [Case("a", 1, "train", tiny_case), Case("b", 0, "train", short)])
    cfg = PreprocessConfig(input_size=TINY_INPUT, phases=(1, 3))
    report = preprocess_cohort(tmp_path / "manifest.csv", tmp_path / "cache", cfg, progress=False)
    assert report.done == ["a"] and "needs 2 post-contrast phases (1, 3); this study has 1" in report.failed["b"]
    cache = open_cache(tmp_path / "cache")
    study = cache.study("a")
    assert cache.load("a").shape[0] == 2 and study.phases == (1, 3) and study.phase_times_s == (75.0, 225.0)
    direct = prepare(load_case(tiny_case), ModelConfig(in_channels=2, preprocess=cfg), "m")
    np.testing.assert_array_equal(cache.load("a"), np.clip(np.rint(direct.array * 255), 0, 255).astype(np.uint8))


def test_fit_and_export_carry_the_record(tmp_path):
    from Training.evaluate import export
    from Training.runfiles import read_domain, write_domain

    run = small_run(tmp_path, 12)
    record = measure_domain(run, device="cpu")
    write_domain(run, record, into_model=True)  # what fit does at its end
    best = load_model(run / "model_best.safetensors")
    assert best.domain.density.threshold == record.density.threshold
    assert best.config.preprocess.phase_times_s == (75.0, 150.0) and read_domain(run).phases == (1, 2)
    export(run, tmp_path / "exported.safetensors")
    exported = load_model(tmp_path / "exported.safetensors")
    np.testing.assert_array_equal(exported.domain.density.cholesky, record.density.cholesky)


def test_dicom_study_with_more_phases(two_phase_model, tiny_case, tmp_path):
    """A GE-style study (one multi-phase series, no injection time) with three post-contrast phases for a model of
    phases 2 and 4: without times after the injection the model's phase numbers are taken, and a study without a
    fourth phase is refused naming both counts."""
    from Testing import dicomsynth

    inputs = load_case(tiny_case)
    study = tmp_path / "study"
    dicomsynth.write_study(study, "ge", inputs.t1, inputs.series[0], inputs.series[1:5])
    result = run_analysis(AnalyzeRequest(model=two_phase_model, out=tmp_path / "out", dicom=study, device="cpu"))
    assert result["phases_used"] == {"phases": [2, 4], "of": 4, "rule": "phase number", "times_s": None,
                                     "line": "post-contrast phases 2, 4 of 4 (the model's phase numbers: the study "
                                             "gives no acquisition times)"}
    short = tmp_path / "short"
    dicomsynth.write_study(short, "ge", inputs.t1, inputs.series[0], inputs.series[1:4])
    with pytest.raises(InputError, match=r"takes 2 post-contrast phases \(2, 4 at 150, 300 s\); this study has 3"):
        run_analysis(AnalyzeRequest(model=two_phase_model, out=tmp_path / "out2", dicom=short, device="cpu"))
