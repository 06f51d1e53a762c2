"""Helpers for tests on a real MRML scene (slicer-core wheel): rotations, matrices, nodes read by MRML's own
reader, snapshots of a scene, the oblique phantom case analyzed once by the real CLI, and a small case's plain
analysis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import slicer
import vtk

from BreastCMSLLib import cli
from BreastCMSLLib.phantom.synth import synth_case

ROOT = Path(__file__).resolve().parent.parent


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = tuple(rotation(0.12, -0.08, 0.2).ravel())


def matrix_of(node) -> np.ndarray:
    """The IJK-to-RAS matrix of a volume node as a 4x4 array."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def make_oblique_case(root: Path) -> dict:
    """A small oblique phantom case, an untrained small model, and the real CLI's analysis of the case."""
    case_dir, model, out = root / "case", root / "model.safetensors", root / "cli_out"
    synth_case(case_dir, seed=5, label=1, shape=(96, 64, 40), spacing=(3.5, 3.2, 3.8), origin=(80.0, 60.0, -30.0),
               direction=OBLIQUE)
    assert cli.main(["init-model", "--out", str(model), "--input-size", "64", "48", "32",
                     "--width-factor", "0.125"]) == 0
    run = subprocess.run([sys.executable, "-m", "BreastCMSLLib.cli", "analyze", str(case_dir), "--model", str(model),
                          "--out", str(out), "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return {"dir": case_dir, "model": model, "out": out, "result": json.loads((out / "result.json").read_text()),
            "truth": json.loads((case_dir / "case.json").read_text())}


def read_node(scene, path: Path):
    """A volume node read by MRML's own storage node (not by the adapter under test)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(path.name.split(".")[0])
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def case_nodes(scene, case_dir: Path):
    """(t1 node, [pre, post_1..6] nodes) of a phantom case folder."""
    t1 = read_node(scene, case_dir / "t1.nrrd")
    series = [read_node(scene, case_dir / "pre.nrrd")] + [read_node(scene, case_dir / f"post_{k}.nrrd")
                                                          for k in range(1, 7)]
    return t1, series


def snapshot(scene, nodes) -> dict:
    """Node IDs of the scene and the voxels, matrices and modification times of ``nodes``."""
    return {"count": scene.GetNumberOfNodes(),
            "ids": [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())],
            "arrays": [slicer.util.arrayFromVolume(n).copy() for n in nodes],
            "matrices": [matrix_of(n) for n in nodes],
            "mtimes": [n.GetImageData().GetMTime() for n in nodes]}


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["count"] == before["count"] and after["ids"] == before["ids"]
    for a, b in zip(before["arrays"], after["arrays"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before["matrices"], after["matrices"]):
        np.testing.assert_array_equal(a, b)
    assert after["mtimes"] == before["mtimes"]


def plain_analysis(root: Path, seed: int) -> dict:
    """A small phantom (``root``/case), an untrained small model and the plain analysis of the case folder (NRRD
    files out, ``run_analysis``): ``root``, ``model``, the ``summary`` and every map and labelmap (``maps``)."""
    import SimpleITK as sitk

    from BreastCMSLLib.panel.exchange import RESULT_ARRAYS
    from BreastCMSLLib.run import AnalyzeRequest, run_analysis

    synth_case(root / "case", seed=seed, label=1, shape=(96, 64, 40), spacing=(3.5, 3.5, 3.5))
    assert cli.main(["init-model", "--out", str(root / "model.safetensors"), "--input-size", "64", "48", "32",
                     "--width-factor", "0.125"]) == 0
    summary = run_analysis(AnalyzeRequest(model=root / "model.safetensors", out=root / "plain",
                                          case_dir=root / "case", device="cpu"))
    maps = {name: sitk.ReadImage(str(root / "plain" / f"{name}.nrrd")) for name in RESULT_ARRAYS}
    return {"root": root, "model": root / "model.safetensors", "summary": summary, "maps": maps}


def assert_result_equals_plain(scene, result, plain: dict) -> None:
    """A session's result (its nodes in ``scene``) gives :func:`plain_analysis`'s answers: probability, cos θ and
    prediction exactly, the peaks to float rounding (LPS -> RAS through the scene), every map and labelmap bit for
    bit."""
    import SimpleITK as sitk

    from BreastCMSLLib.config import MAP_NAMES
    from BreastCMSLLib.panel.exchange import RESULT_ARRAYS

    expected = plain["summary"]
    assert (result.probability, result.cos_theta, result.prediction) == tuple(
        expected[k] for k in ("probability", "cos_theta", "prediction"))
    for name in MAP_NAMES:
        x, y, z = expected[f"{name}_peak_lps"]
        np.testing.assert_allclose(result.peaks_ras[name], [-x, -y, z], rtol=0, atol=1e-9)
    for name in RESULT_ARRAYS:
        node = scene.GetNodeByID(result.nodes[name if name.endswith("_label") else f"{name}_volume"])
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node),
                                      sitk.GetArrayViewFromImage(plain["maps"][name]), name)
