"""The preprocessed cache: atomic, resumable after SIGKILL, corrupt cases reported, one config per cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from BreastCMSLLib.cohort.manifest import Case, read_manifest
from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.preprocess import load_case, preprocess_case
from Training.cache import create_cache, open_cache, preprocess_cohort, quantize
from Training.cohort import synth_cohort

ROOT = Path(__file__).resolve().parents[1]
INPUT = (64, 48, 32)


def test_preprocess_kill_resume_and_corrupt_case(tmp_path):
    synth_cohort(tmp_path / "cohort", 6, seed=11, shape=(96, 64, 40))
    manifest = tmp_path / "cohort" / "manifest.csv"
    broken = tmp_path / "cohort" / "cases" / "case_0005" / "t1.nrrd"
    broken.write_bytes(b"NRRD0004\nthis is not a volume\n")
    cache_dir = tmp_path / "cache"
    cmd = [sys.executable, "-m", "Training.cli", "preprocess", "--manifest", str(manifest), "--cache",
           str(cache_dir), "--input-size", *map(str, INPUT), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((cache_dir / "entries").glob("*.json")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = sorted(p.stem for p in (cache_dir / "entries").glob("*.json"))
    assert 1 <= len(first) < 5, "the kill should land after the first entry and before the end"
    stamps = {s: (cache_dir / "entries" / f"{s}.json").stat().st_mtime_ns for s in first}
    # a half-written entry of another case: .npy without marker (as a kill between the two would leave)
    half = next(c.subject_id for c in read_manifest(manifest) if c.subject_id not in [*first, "case_0005"])
    (cache_dir / "entries" / f"{half}.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")

    report = preprocess_cohort(manifest, cache_dir, PreprocessConfig(input_size=INPUT), workers=1,
                               progress=False)
    assert sorted(report.skipped) == first  # finished entries are not redone ...
    assert {s: (cache_dir / "entries" / f"{s}.json").stat().st_mtime_ns for s in first} == stamps
    assert half in report.done  # ... the half-written one is
    assert set(report.failed) == {"case_0005"}  # the corrupt case is reported, with file and reason
    assert "t1.nrrd" in report.failed["case_0005"] and "cannot be read" in report.failed["case_0005"]
    assert json.loads((cache_dir / "failures.json").read_text()) == report.failed
    cache = open_cache(cache_dir)
    assert all(cache.is_done(c.subject_id) for c in cache.cases if c.subject_id != "case_0005")
    # every entry holds exactly the quantized output of the core's preprocessing
    case = next(c for c in cache.cases if c.subject_id == half)
    expected = quantize(preprocess_case(load_case(case.case_dir), cache.preprocess).array)
    stored = cache.load(half)
    assert stored.dtype == np.uint8 and stored.shape == (6, *INPUT)
    np.testing.assert_array_equal(stored, expected)
    # a second run has nothing left but the broken case
    again = preprocess_cohort(manifest, cache_dir, PreprocessConfig(input_size=INPUT), progress=False)
    assert again.done == [] and set(again.failed) == {"case_0005"}


def spawned_workers():
    """pids of this process's multiprocessing (spawn) workers (Linux /proc)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"spawn_main" in cmdline:
            yield int(entry)


def test_a_dying_worker_fails_no_other_case(tmp_path):
    """A worker killed mid-run, as the out-of-memory killer would: the pool breaks, every case still ends done."""
    synth_cohort(tmp_path / "cohort", 6, seed=12, shape=(96, 64, 40))
    manifest, entries = tmp_path / "cohort" / "manifest.csv", tmp_path / "cache" / "entries"
    killed: list[int] = []

    def kill_a_worker() -> None:  # once the first case is done, the workers are past their start
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if entries.is_dir() and any(entries.glob("*.json")):
                for pid in spawned_workers():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    report = preprocess_cohort(manifest, tmp_path / "cache", PreprocessConfig(input_size=INPUT), workers=2,
                               progress=False)
    killer.join()
    assert len(killed) == 1
    assert report.failed == {}
    assert sorted(report.done) == sorted(c.subject_id for c in read_manifest(manifest))


def test_cache_refuses_another_config(tmp_path):
    cases = [Case("a", 1, "train", tmp_path / "a")]
    create_cache(tmp_path / "c", PreprocessConfig(input_size=INPUT), cases)
    with pytest.raises(InputError, match="another preprocessing config"):
        create_cache(tmp_path / "c", PreprocessConfig(input_size=(64, 48, 48)), cases)
    res = subprocess.run([sys.executable, "-m", "Training.cli", "fit", "--cache", str(tmp_path / "nope"),
                          "--method", "cmsl", "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "not a BreastCMSL cache" in res.stderr
    assert not (tmp_path / "run").exists()
