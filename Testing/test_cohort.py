"""``breastcmsl analyze-cohort``: a cohort of phantoms with a truncated case, an ambiguous DICOM study and an empty
folder; every good case equals single-case ``analyze``; SIGKILL then rerun; 2 torchrun CPU ranks; the summary."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.cohort.manifest import Case, write_manifest
from BreastCMSLLib.cohort.metrics import bootstrap_metrics
from BreastCMSLLib.dicom.study import study_inputs
from BreastCMSLLib.dicom.times import study_times
from BreastCMSLLib.phantom.parameters import PhantomConfig
from BreastCMSLLib.phantom.synth import make_case, synth_case
from BreastCMSLLib.pipeline.kinetics_case import case_kinetics
from BreastCMSLLib.pipeline.output import RESULT_FILES
from Testing import dicomsynth
from Testing.dicomsynth import SeriesSpec

from .conftest import ROOT, TINY_SHAPE, TINY_SPACING, run_cli

POSTS = [f"post_{k}" for k in range(1, 7)]
GOOD = ["a_case", "b_case", "c_study", "d_case"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """root/: three phantom case folders, a Siemens-style DICOM study, a case with a truncated post_3, a study with
    two non-fat-suppressed T1s before contrast, an empty folder."""
    root = tmp_path_factory.mktemp("cohort") / "root"
    for name, seed, label in (("a_case", 1, 1), ("b_case", 2, 0), ("d_case", 4, 1), ("e_truncated", 5, 1)):
        synth_case(root / name, seed=seed, label=label, shape=TINY_SHAPE, spacing=TINY_SPACING)
    post_3 = root / "e_truncated" / "post_3.nrrd"
    post_3.write_bytes(post_3.read_bytes()[: post_3.stat().st_size // 2])
    images = make_case(3, PhantomConfig(shape=TINY_SHAPE, spacing=TINY_SPACING, label=1)).images
    volumes = images["t1"], images["pre"], [images[p] for p in POSTS]
    dicomsynth.write_study(root / "c_study", "siemens", *volumes)
    dicomsynth.write_study(root / "f_ambiguous", "siemens", *volumes,
                           extra=[SeriesSpec("t1_fl3d_tra_nonFS", [images["t1"]], [-30.0])])
    (root / "g_empty").mkdir()
    return root


def cohort_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "BreastCMSLLib.cli", "analyze-cohort", *map(str, args)]


def rows(out) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in table]


def result(folder) -> dict:
    data = json.loads((folder / "result.json").read_text())
    data.pop("timings")
    return data


def assert_same_case(a, b, ignore=()) -> None:
    """The case folders ``a`` and ``b`` hold the same result.json (but for the ``ignore`` keys) and maps."""
    assert {k: v for k, v in result(a).items() if k not in ignore} == {k: v for k, v in result(b).items()
                                                                          if k not in ignore}
    for name in ("coam", "cam", "fine", "coam_label", "cam_label", "fine_label"):
        x, y = sitk.ReadImage(str(a / f"{name}.nrrd")), sitk.ReadImage(str(b / f"{name}.nrrd"))
        assert np.array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y)), name
        assert (x.GetOrigin(), x.GetSpacing(), x.GetDirection()) == (y.GetOrigin(), y.GetSpacing(), y.GetDirection())


@pytest.fixture(scope="module")
def one_run(cohort, tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = subprocess.run(cohort_cmd("--root", cohort, "--model", tiny_model_path, "--out", out, "--device", "cpu",
                                     "--workers", "2"), capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_cohort_goes_on_past_broken_cases_and_equals_analyze(cohort, one_run, tiny_model_path, tmp_path):
    out, summary = one_run
    table = {r["id"]: r for r in rows(out)}
    assert list(table) == [*GOOD, "e_truncated", "f_ambiguous", "g_empty"]  # the root's subfolders in name order
    assert (summary["ok"], summary["error"], summary["skipped"]) == (4, 2, 1)
    assert table["e_truncated"]["status"] == "error" and "post_3.nrrd" in table["e_truncated"]["error"]
    assert table["f_ambiguous"]["status"] == "error"
    assert "2 candidates for the non-fat-suppressed T1" in table["f_ambiguous"]["error"]
    assert table["g_empty"]["status"] == "skipped"
    assert sorted(p.name for p in (out / "cases").iterdir()) == GOOD  # failed cases leave no folder
    for case in GOOD:
        row, folder = table[case], out / "cases" / case
        assert row["status"] == "ok" and row["error"] == "" and float(row["seconds"]) > 0
        assert set(RESULT_FILES) <= {p.name for p in folder.iterdir()}
        single = tmp_path / case
        source = ["--dicom", cohort / case] if case == "c_study" else [cohort / case]
        proc = run_cli("analyze", *source, "--model", tiny_model_path, "--out", single, "--device", "cpu")
        assert proc.returncode == 0, proc.stderr
        assert_same_case(folder, single)
        data = result(folder)
        assert float(row["probability"]) == pytest.approx(data["probability"], abs=1e-6)
        assert [float(row[f"coam_peak_lps_{a}"]) for a in "xyz"] == pytest.approx(data["coam_peak_lps"], abs=0.005)
        assert row["mask_source"] == "t1"
    assert table["c_study"]["roles"].split() == ["t1=100", "pre=200", *[f"post_{k}={200 + 100 * k}"
                                                                       for k in range(1, 7)]]
    assert table["a_case"]["roles"].split()[:2] == ["t1=t1.nrrd", "pre=pre.nrrd"]


def test_sigkill_then_rerun_gives_the_same_results(cohort, one_run, tiny_model_path, tmp_path):
    out = tmp_path / "out"
    cmd = cohort_cmd("--root", cohort, "--model", tiny_model_path, "--out", out, "--device", "cpu", "--workers", "1")
    semaphores = set(Path("/dev/shm").glob("sem.mp-*"))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while not any((out / "cases").glob("[!.]*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes
    proc.wait()
    for path in set(Path("/dev/shm").glob("sem.mp-*")) - semaphores:  # multiprocessing's, the killed group's
        path.unlink(missing_ok=True)
    done = [p for p in (out / "cases").iterdir() if not p.name.startswith(".")]
    assert 1 <= len(done) < len(GOOD)  # killed mid-run
    for folder in done:  # every case folder that exists is complete
        assert set(RESULT_FILES) <= {p.name for p in folder.iterdir()}
    before = {p.name: (p / "result.json").stat().st_mtime_ns for p in done}
    left = sorted(Path("/dev/shm").glob(f"breastcmsl_slot_{proc.pid}_*"))  # the killed run's input slots
    assert left
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert not any(p.exists() for p in left)  # the rerun removed them
    assert all((out / "cases" / n / "result.json").stat().st_mtime_ns == t for n, t in before.items())  # kept
    assert without_seconds(rows(out)) == without_seconds(rows(one_run[0]))
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]  # no staging folder left
    for case in GOOD:
        assert_same_case(out / "cases" / case, one_run[0] / "cases" / case)


def test_failed_cases_free_their_shared_memory_slots(cohort, one_run, tiny_model_path, tmp_path):
    """One worker gets three input slots (read ahead + being written); five broken cases before a good one would
    leave it none if a failed case kept its slot."""
    root = tmp_path / "root"
    for k in range(5):
        shutil.copytree(cohort / "e_truncated", root / f"broken_{k}")
    shutil.copytree(cohort / "a_case", root / "z_good")
    out = tmp_path / "out"
    proc = run_cli("analyze-cohort", "--root", root, "--model", tiny_model_path, "--out", out, "--device", "cpu",
                   "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in rows(out)] == ["error"] * 5 + ["ok"]
    assert_same_case(out / "cases" / "z_good", one_run[0] / "cases" / "a_case", ignore={"inputs"})


def test_two_torchrun_ranks_equal_one_process(cohort, one_run, tiny_model_path, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "BreastCMSLLib.cohort", "--root", str(cohort), "--model", str(tiny_model_path),
                           "--out", str(out), "--device", "cpu", "--workers", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ranks"] == 2
    assert without_seconds(rows(out)) == without_seconds(rows(one_run[0]))
    for case in GOOD:
        assert_same_case(out / "cases" / case, one_run[0] / "cases" / case)
    assert sorted(p.name for p in out.iterdir()) == ["cases", "results.csv"]  # the ranks' partial tables merged


def test_manifest_summary_uses_evaluate_metrics(cohort, one_run, tiny_model_path, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(one_run[0], out)  # the finished cases are kept: only the failed ones are retried
    truth = {c: json.loads((cohort / c / "case.json").read_text()) for c in GOOD if c != "c_study"}
    cases = [Case(c, int(t["label"]), "", cohort / c, None, tuple(t["center_lps"])) for c, t in truth.items()]
    cases.append(Case("e_truncated", 1, "", cohort / "e_truncated"))
    write_manifest(tmp_path / "manifest.csv", cases)
    proc = run_cli("analyze-cohort", "--manifest", tmp_path / "manifest.csv", "--model", tiny_model_path,
                   "--out", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    table = rows(out)
    assert [r["id"] for r in table] == ["a_case", "b_case", "d_case", "e_truncated"]
    assert [r["label"] for r in table] == [str(int(truth[c]["label"])) for c in ("a_case", "b_case", "d_case")] + ["1"]
    ok = [r for r in table if r["status"] == "ok"]
    metrics = bootstrap_metrics(np.array([int(r["label"]) for r in ok]), np.array([float(r["probability"])
                                                                                 for r in ok]))
    text = (out / "summary.md").read_text()
    cells = [("n/a" if not math.isfinite(m["value"]) else f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
             for m in metrics.values()]
    assert f"| tiny | {' | '.join(cells)} |" in text
    assert "4 cases: 3 analyzed, 1 failed, 0 skipped" in text
    # distances: independent of the runner, from each case's peaks and its truth
    coam = [np.linalg.norm(np.subtract(result(out / "cases" / c)["coam_peak_lps"], truth[c]["center_lps"]))
            for c in ("a_case", "b_case", "d_case")]
    assert f"| COAM | 3 | {np.median(coam):.1f} | {np.mean(coam):.1f} | {np.max(coam):.1f} |" in text


@pytest.mark.parametrize(("args", "problem"), [
    (["--root", "NOPE"], "NOPE: no such folder of cases"),
    (["--root", "ROOT", "--label-fraction", "0"], "--label-fraction: must be in (0, 1]"),
    (["--root", "ROOT", "--workers", "0"], "--workers: must be at least 1"),
    (["--manifest", "NOPE.csv"], "NOPE.csv: no such manifest file"),
])
def test_user_mistakes_are_one_line_and_exit_2(args, problem, cohort, tiny_model_path, tmp_path):
    args = [str(cohort) if a == "ROOT" else str(tmp_path / a) if a.startswith("NOPE") else a for a in args]
    proc = run_cli("analyze-cohort", *args, "--model", tiny_model_path, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and problem in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_model_is_a_user_mistake(cohort, tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a model")
    proc = run_cli("analyze-cohort", "--root", cohort, "--model", bad, "--out", tmp_path / "out")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and str(bad) in proc.stderr
    assert not (tmp_path / "out").exists()


def test_too_little_shared_memory_is_one_line_naming_the_folder(tmp_path):
    from BreastCMSLLib.cohort.slots import check_room
    from BreastCMSLLib.errors import InputError

    check_room(2, (6, 8, 8, 8), tmp_path)  # 24 KiB: room
    check_room(10**9, (6, 340, 220, 128), tmp_path / "none")  # no such folder: nothing to check
    with pytest.raises(InputError) as err:
        check_room(10**6, (6, 340, 220, 128), tmp_path)  # 215 TiB
    assert str(tmp_path) in str(err.value) and "--shm-size" in str(err.value) and "\n" not in str(err.value)


def test_preprocessed_crosses_processes_small_and_whole():
    """What a worker sends per case: the masks bit-packed and the reference as geometry, equal after the trip."""
    import pickle

    from BreastCMSLLib.pipeline.preprocess import Preprocessed

    rng = np.random.default_rng(0)
    mask = sitk.GetImageFromArray((rng.random((9, 11, 13)) > 0.5).astype(np.uint8))  # (k, j, i): size 13, 11, 9
    mask.SetSpacing((0.7, 0.8, 2.5))
    mask.SetOrigin((-10.0, 3.0, 7.5))
    reference = sitk.Image((15, 12, 7), sitk.sitkUInt8)
    reference.SetSpacing((0.6, 0.9, 3.0))
    reference.SetOrigin((1.0, -2.0, 0.5))
    reference.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    valid = rng.random((13, 11, 9)) > 0.3
    prep = Preprocessed(None, mask, reference, valid)
    back = pickle.loads(pickle.dumps(prep, protocol=5))
    assert np.array_equal(sitk.GetArrayFromImage(back.input_grid), sitk.GetArrayFromImage(mask))
    assert back.input_grid.GetPixelID() == sitk.sitkUInt8
    for image, original in ((back.input_grid, mask), (back.reference, reference)):
        assert (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == (
            original.GetSize(), original.GetSpacing(), original.GetOrigin(), original.GetDirection())
    assert not sitk.GetArrayViewFromImage(back.reference).any()
    assert back.valid.dtype == bool and np.array_equal(back.valid, valid)
    assert back.array is None
    plain = len(pickle.dumps((mask, reference, valid), protocol=5))
    assert len(pickle.dumps(prep, protocol=5)) < plain / 4


def _write_through_slot(slot, value: float) -> float:
    """In a spawned process: map ``slot`` as a worker does, read its first value, fill it with ``value``."""
    array = slot.array()
    first = float(array.flat[0])
    array[...] = value
    return first


def test_slots_grow_and_are_shared_with_a_worker_process():
    """A pool made for one case per forward pass grows for a GPU's batches; a spawned process sees what this one
    wrote into a slot, and this one what it wrote back (the worker's mapping, MAP_POPULATE on Linux)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from BreastCMSLLib.cohort.slots import SlotPool

    with SlotPool(1, (2, 3, 4, 5)) as slots:
        slots.grow(3)
        taken = [slots.take() for _ in range(3)]
        assert slots.take() is None and len({s.name for s in taken}) == 3
        for k, slot in enumerate(taken):
            slot.array()[...] = k + 0.5
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            seen = [pool.submit(_write_through_slot, slot, 10.0 + k).result() for k, slot in enumerate(taken)]
        assert seen == [0.5, 1.5, 2.5]
        assert [float(slot.array().min()) for slot in taken] == [10.0, 11.0, 12.0]
        slots.give(taken[1])
        assert slots.take() == taken[1]  # the slot given back last is taken first
    assert not list(Path("/dev/shm").glob(f"breastcmsl_slot_{os.getpid()}_*"))


def _tunables() -> str | None:
    """In a worker process: its glibc tunables."""
    return os.environ.get("GLIBC_TUNABLES")


def test_worker_processes_ask_for_huge_pages_and_leave_the_environment_as_it_was(monkeypatch):
    """The cohort's worker processes start with glibc's huge-page tunable added to the user's; a value the user set
    wins; this process's environment is unchanged afterwards."""
    from BreastCMSLLib.cohort.workers import Workers
    from BreastCMSLLib.memory import HUGE_PAGES, huge_pages_for_children

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
    with Workers(1) as workers:
        assert workers.submit(_tunables).result() == f"glibc.malloc.tcache_count=0:{HUGE_PAGES}"
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    with huge_pages_for_children():
        assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"
    monkeypatch.delenv("GLIBC_TUNABLES")
    with huge_pages_for_children():
        assert os.environ["GLIBC_TUNABLES"] == HUGE_PAGES
    assert "GLIBC_TUNABLES" not in os.environ


def _resident_pages(path: Path) -> int:
    """How many of ``path``'s pages are in the page cache (Linux ``mincore`` on a mapping that faults nothing in)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        assert ctypes.CDLL(None, use_errno=True).mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) == 0
        resident = sum(v & 1 for v in vector)
        del address
    return resident


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and posix_fadvise as on Linux")
def test_write_through_leaves_the_files_whole_and_out_of_the_page_cache(tmp_path):
    """A case folder is put on disk and dropped from the page cache before it is moved into place."""
    from BreastCMSLLib.atomic import write_through

    data = np.random.default_rng(0).random(2**20, dtype=np.float32).tobytes()  # 4 MiB
    (tmp_path / "map.nrrd").write_bytes(data)
    (tmp_path / "result.json").write_text('{"probability": 0.5}')
    assert _resident_pages(tmp_path / "map.nrrd") > 0  # just written: cached
    write_through(tmp_path)
    assert _resident_pages(tmp_path / "map.nrrd") == 0
    assert (tmp_path / "map.nrrd").read_bytes() == data
    assert json.loads((tmp_path / "result.json").read_text()) == {"probability": 0.5}


def test_batches_of_cases_equal_one_case_per_pass(cohort, one_run, tiny_model_path, tmp_path):
    """``--batch 3``, the path a GPU takes by default, here on the CPU (up to 3 cases per forward pass, as many as
    are ready; the slot pool grown for them): the same rows and maps as one case per pass, to float rounding
    (a batch's stem runs on the union of its cases' boxes: ``test_inference_input.py``)."""
    out = tmp_path / "out"
    proc = subprocess.run(cohort_cmd("--root", cohort, "--model", tiny_model_path, "--out", out, "--device", "cpu",
                                     "--workers", "2", "--batch", "3"), capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert 1 <= json.loads(proc.stdout)["rank0_stages"]["forward_passes"] <= len(GOOD)  # how many: as cases get ready
    single = {r["id"]: r for r in rows(one_run[0])}
    for row in rows(out):
        base = single[row["id"]]
        assert (row["status"], row["error"]) == (base["status"], base["error"])
        if row["status"] == "ok":
            assert float(row["probability"]) == pytest.approx(float(base["probability"]), abs=1e-5)
    for case in GOOD:
        for name in ("coam", "cam", "fine"):
            batched, alone = (sitk.GetArrayFromImage(sitk.ReadImage(str(o / "cases" / case / f"{name}.nrrd")))
                              for o in (out, one_run[0]))
            np.testing.assert_allclose(batched, alone, atol=1e-4, err_msg=f"{case} {name}")


def test_kinetics_columns_equal_the_kinetics_command(cohort, tiny_model_path, tmp_path):
    """``--kinetics`` and a manifest ``roi_box``: the classes at the fine peak of results.csv equal ``breastcmsl
    kinetics --point`` at that peak (case folder and DICOM study), ftv_ml equals its ``--roi-box``; a case with
    subtractions only has empty kinetics columns."""
    truth = json.loads((cohort / "a_case" / "case.json").read_text())
    box = (*np.subtract(truth["center_lps"], 12.0), *np.add(truth["center_lps"], 12.0))
    synth_case(tmp_path / "s_sub", seed=7, label=0, shape=TINY_SHAPE, spacing=TINY_SPACING, inputs="subtractions")
    write_manifest(tmp_path / "manifest.csv", [Case("a_case", 1, "", cohort / "a_case", None, None, box),
                                               Case("c_study", 1, "", cohort / "c_study"),
                                               Case("s_sub", 0, "", tmp_path / "s_sub")])
    out = tmp_path / "out"
    proc = run_cli("analyze-cohort", "--manifest", tmp_path / "manifest.csv", "--model", tiny_model_path,
                   "--out", out, "--device", "cpu", "--kinetics")
    assert proc.returncode == 0, proc.stderr
    table = {r["id"]: r for r in rows(out)}
    row = table["a_case"]
    assert row["status"] == "ok", row["error"]
    peak = [row[f"fine_peak_lps_{a}"] for a in "xyz"]
    single = run_cli("kinetics", cohort / "a_case", "--point", *peak, "--roi-box", *box, "--out", tmp_path / "single")
    assert single.returncode == 0, single.stderr
    report = json.loads((tmp_path / "single" / "kinetics.json").read_text())
    assert (row["fine_initial"], row["fine_delayed"]) == (report["point"]["initial"], report["point"]["delayed"])
    assert report["point"]["delayed"] in ("persistent", "plateau", "washout")
    assert float(row["ftv_ml"]) == report["ftv_ml"] > 0
    # the DICOM study (phases re-read from their files; no box): the curve as `kinetics --dicom` makes it, at the
    # peak (on its breast mask's rim here, which --point refuses)
    row = table["c_study"]
    study, _ = study_inputs(cohort / "c_study")
    curve = case_kinetics(study.inputs, study_times(study.assignment, "c_study")).curve(
        [float(row[f"fine_peak_lps_{a}"]) for a in "xyz"])
    assert (row["fine_initial"], row["fine_delayed"], row["ftv_ml"]) == (curve["initial"], curve["delayed"], "")
    assert table["s_sub"]["status"] == "ok", table["s_sub"]["error"]
    assert (table["s_sub"]["fine_initial"], table["s_sub"]["fine_delayed"], table["s_sub"]["ftv_ml"]) == ("", "", "")
    assert "subtractions only" in result(out / "cases" / "s_sub")["kinetics"]["note"]
