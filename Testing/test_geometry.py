"""Geometry: maps land exactly on the reference grid; storage order does not change the answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastCMSLLib.network.modelfile import load_model
from BreastCMSLLib.pipeline.analyze import analyze_case
from BreastCMSLLib.pipeline.output import RESULT_FILES
from BreastCMSLLib.pipeline.preprocess import CaseInputs, load_case

from .conftest import TINY_SHAPE, run_cli

OBLIQUE = (4.2, 3.1, 2.6)  # anisotropic spacing, mm


def rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory):
    """A phantom stored on an oblique grid (12 deg about z, 7 about x), anisotropic, non-zero origin."""
    from BreastCMSLLib.phantom.synth import synth_case

    out = tmp_path_factory.mktemp("oblique") / "case"
    synth_case(out, seed=11, label=1, shape=(88, 72, 44), spacing=OBLIQUE,
               direction=tuple(rotation(12, 7).ravel()), origin=(-171.5, -83.25, 41.0))
    return out


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
            and a.GetDirection() == b.GetDirection())


def test_cli_maps_have_exactly_the_reference_geometry(oblique_case, tiny_model_path, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("analyze", oblique_case, "--model", tiny_model_path, "--out", out, "--progress")
    assert proc.returncode == 0, proc.stderr
    stages = [line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("progress ")]
    assert [s for _, s in stages] == ["read", "preprocess", "inference", "maps", "write", "done"]
    assert [float(f) for f, _ in stages] == sorted(float(f) for f, _ in stages)
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    reference = sitk.ReadImage(str(oblique_case / "post_1.nrrd"))
    assert not np.allclose(np.reshape(reference.GetDirection(), (3, 3)), np.eye(3))
    for name in ("coam", "cam", "fine", "coam_label", "cam_label", "fine_label"):
        image = sitk.ReadImage(str(out / f"{name}.nrrd"))
        assert same_geometry(image, reference), name
        values = sitk.GetArrayFromImage(image)
        if name.endswith("label"):
            assert image.GetPixelID() == sitk.sitkUInt8 and set(np.unique(values)) == {0, 1}
        else:
            assert image.GetPixelID() == sitk.sitkFloat32
            assert values.min() >= 0.0 and values.max() == pytest.approx(1.0, abs=1e-6)
    result = json.loads((out / "result.json").read_text())
    assert result["reference_geometry"]["direction"] == pytest.approx(list(reference.GetDirection()), abs=0)
    assert 0.0 <= result["probability"] <= 1.0
    assert result["prediction"] in ("benign", "malignant")
    assert result["model"]["untrained"] is True
    # the peak is a voxel centre of the reference grid where the written map is 1
    coam = sitk.ReadImage(str(out / "coam.nrrd"))
    index = coam.TransformPhysicalPointToContinuousIndex(result["coam_peak_lps"])
    assert np.allclose(index, np.round(index), atol=1e-4)
    assert coam[tuple(round(v) for v in index)] == pytest.approx(1.0, abs=1e-5)


def restored(image: sitk.Image, order: list[int], flips: list[bool]) -> sitk.Image:
    """The same physical volume stored in another voxel order (axes permuted, then flipped)."""
    return sitk.Flip(sitk.PermuteAxes(image, order), flips)


@pytest.mark.parametrize(("order", "flips"), [([0, 1, 2], [True, False, True]), ([1, 0, 2], [False, True, False]),
                                              ([2, 0, 1], [True, True, False])])
def test_storage_order_does_not_change_the_answer(oblique_case, tiny_model_path, order, flips):
    loaded = load_model(tiny_model_path)
    base = load_case(oblique_case)
    other = CaseInputs(restored(base.t1, order, flips), [restored(s, order, flips) for s in base.series],
                       base.kind, base.sources)
    probe = other.series[3]  # the same physical point has the same value in both storages
    point = base.series[3].TransformIndexToPhysicalPoint((10, 20, 30))
    assert probe.EvaluateAtPhysicalPoint(point) == pytest.approx(base.series[3][10, 20, 30], rel=1e-6)

    a, b = analyze_case(base, loaded), analyze_case(other, loaded)
    assert abs(a.probability - b.probability) < 1e-4
    voxel = min(OBLIQUE)
    for peak in ("coam_peak_lps", "cam_peak_lps", "fine_peak_lps"):
        assert np.linalg.norm(np.subtract(getattr(a, peak), getattr(b, peak))) < voxel, peak
    assert same_geometry(b.coam, other.reference) and same_geometry(b.fine, other.reference)
    back = sitk.Resample(b.fine, a.fine, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(a.fine)).max() < 1e-3
    back = sitk.Resample(b.coam, a.coam, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.abs(sitk.GetArrayFromImage(back) - sitk.GetArrayFromImage(a.coam)).max() < 1e-3


def test_phases_and_subtractions_give_the_same_answer(tiny_case, tiny_model_path, tmp_path):
    from BreastCMSLLib.phantom.synth import synth_case

    subs = tmp_path / "subs"
    synth_case(subs, seed=7, label=1, shape=TINY_SHAPE, spacing=(3.6, 3.6, 3.5), inputs="subtractions")
    loaded = load_model(tiny_model_path)
    a, b = analyze_case(load_case(tiny_case), loaded), analyze_case(load_case(subs), loaded)
    assert abs(a.probability - b.probability) < 1e-5
    assert a.coam_peak_lps == pytest.approx(b.coam_peak_lps)
