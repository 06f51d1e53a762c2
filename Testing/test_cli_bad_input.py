"""Every bad input: one line naming the file and the problem, exit code 2, nothing in the output folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BreastCMSLLib.cli import main

from .conftest import run_cli


def volume(path):
    return sitk.ReadImage(str(path))


def write(image, path):
    sitk.WriteImage(image, str(path))


def spoil_missing(case):
    (case / "post_3.nrrd").unlink()
    return ["--t1", case / "t1.nrrd", "--pre", case / "pre.nrrd", "--post", case / "post_3.nrrd"], "post_3.nrrd", \
        "no such file"


def spoil_unreadable(case):
    (case / "post_2.nrrd").write_bytes(b"NRRD0004\nthis is not a header\n\x00\x01")
    return [case], "post_2.nrrd", "cannot be read"


def spoil_2d(case):
    write(volume(case / "post_1.nrrd")[:, :, 5], case / "post_1.nrrd")
    return [case], "post_1.nrrd", "2D"


def spoil_4d(case):
    v = volume(case / "pre.nrrd")
    write(sitk.JoinSeries([v, v]), case / "pre.nrrd")
    return [case], "pre.nrrd", "4D"


def spoil_channels(case):
    """A study with five post-contrast phases: the last phase and its time gone."""
    (case / "post_6.nrrd").unlink()
    times = json.loads((case / "times.json").read_text())
    (case / "times.json").write_text(json.dumps({**times, "post_s": times["post_s"][:5]}))
    return [case], "post_1.nrrd", "takes 6 subtraction channels, these inputs give 5"


def spoil_overlap(case):
    v = volume(case / "t1.nrrd")
    v.SetOrigin([o + 5000.0 for o in v.GetOrigin()])
    write(v, case / "t1.nrrd")
    return [case], "t1.nrrd", "does not overlap"


def spoil_nan(case):
    v = volume(case / "post_4.nrrd")
    a = sitk.GetArrayFromImage(v).astype(np.float32)
    a[3, 4, 5] = np.nan
    a[6, 7, 8] = np.inf
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(v)
    write(out, case / "post_4.nrrd")
    return [case], "post_4.nrrd", "NaN or Inf"


def spoil_constant(case):
    v = volume(case / "post_5.nrrd")
    blank = sitk.Image(v.GetSize(), v.GetPixelID())
    blank.CopyInformation(v)
    write(blank, case / "post_5.nrrd")
    return [case], "post_5.nrrd", "empty"


def spoil_too_small(case):
    for name in ["t1", "pre"] + [f"post_{k}" for k in range(1, 7)]:
        write(volume(case / f"{name}.nrrd")[:, :, :20], case / f"{name}.nrrd")
    return [case], "post_1.nrrd", "smaller than the network can take"


SPOILERS = [spoil_missing, spoil_unreadable, spoil_2d, spoil_4d, spoil_channels, spoil_overlap, spoil_nan,
            spoil_constant, spoil_too_small]


@pytest.mark.parametrize("spoil", SPOILERS, ids=[s.__name__[6:] for s in SPOILERS])
def test_bad_case_input(spoil, tiny_case, tiny_model_path, tmp_path, capsys):
    case = tmp_path / "case"
    shutil.copytree(tiny_case, case)
    inputs, filename, problem = spoil(case)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["analyze", *map(str, inputs), "--model", str(tiny_model_path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert filename in err and problem in err, err
    assert list(out.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_pickle_model_is_refused_by_the_cli(tiny_case, tmp_path):
    evil = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, evil)
    out = tmp_path / "out"
    proc = run_cli("analyze", tiny_case, "--model", evil, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "model.pt" in proc.stderr and "refusing to unpickle" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_foreign_safetensors_model_is_refused(tiny_case, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    out = tmp_path / "out"
    proc = run_cli("analyze", tiny_case, "--model", other, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "other.safetensors" in proc.stderr and "not a BreastCMSL model" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(("args", "problem"), [
    (["--device", "gpu"], "expected auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:7"], "cuda:7 requested"),
    (["--label-fraction", "1.5"], "must be in (0, 1]"),
])
def test_bad_options(args, problem, tiny_case, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["analyze", str(tiny_case), "--model", str(tiny_model_path), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and problem in err, err
    assert not out.exists() or list(out.iterdir()) == []


def test_output_folder_that_is_a_file(tiny_case, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    assert main(["analyze", str(tiny_case), "--model", str(tiny_model_path), "--out", str(out)]) == 2
    assert "the output folder is an existing file" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize(("args", "problem"), [
    (["--channels", "0"], "in_channels must be >= 1"),
    (["--width-factor", "0"], "width_factor > 0"),
    (["--input-size", "64", "16", "64"], "at least 32 voxels"),
])
def test_init_model_refuses_impossible_networks(args, problem, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["init-model", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err, err
    assert not out.exists()
