"""The volumes a session and its warm worker exchange, as memory-mapped arrays instead of image files.

The session writes each input node's voxels, as they are in the scene (voxel type kept), into a ``.npy`` file of
the job's folder (in ``/dev/shm`` where it has room, :func:`~BreastCMSLLib.panel.session.transfer_folder`) and sends
each volume's LPS geometry and node name in the ``ANALYZE`` message (:func:`write_inputs`); the worker maps the
files and makes the analysis's :class:`~BreastCMSLLib.pipeline.preprocess.CaseInputs` from them
(:func:`case_inputs`), checked as files are. The worker writes the maps and labelmaps as ``.npy`` files beside
result.json (:func:`write_result`: no image files, no compression, no overview figure, which the panel never shows),
and the session maps them and adds them to the scene on the reference grid that result.json records
(:func:`read_result`). A ``.npy`` file is numpy's own format: a header naming the voxel type and shape, then the
voxels, so mapping one is one copy at most; the cohort's shared-memory slots (:mod:`BreastCMSLLib.cohort.slots`)
hold float32 network inputs of one shape for a whole run, these one job's volumes of any type and shape, removed
with the job's folder. Timings: ``benchmarks/README.md``. numpy and SimpleITK only: the worker imports this module.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.errors import InputError

RESULT_ARRAYS = tuple(f"{m}{s}" for m in MAP_NAMES for s in ("", "_label"))  # the maps, in result.json's order


def write_inputs(volumes: list[tuple[np.ndarray, dict, str] | None], folder: Path) -> list[dict | None]:
    """Write each (voxels (k, j, i), LPS geometry, node name) into ``folder`` (t1.npy, series_1.npy, ...; None:
    no T1) and return what the worker needs of each: ``path``, ``source`` (the node's name) and the geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["t1", *(f"series_{index}" for index in range(1, len(volumes)))]
    described = [None if volume is None else {"path": str(folder / f"{name}.npy"), "source": volume[2], **volume[1]}
                 for volume, name in zip(volumes, names)]
    jobs = [(volume[0], entry["path"]) for volume, entry in zip(volumes, described) if volume is not None]
    with ThreadPoolExecutor(2) as pool:  # file writes release the GIL
        list(pool.map(lambda job: np.save(job[1], job[0]), jobs))
    return described


def still_hold(volumes: list[tuple[np.ndarray, dict, str] | None], written: list[dict | None]) -> bool:
    """Whether the files :func:`write_inputs` wrote (``written``, its return) still hold ``volumes`` (its arguments
    now) exactly: the same voxels, voxel type, geometry and names; one comparison pass over the voxels."""
    if len(volumes) != len(written):
        return False
    for volume, entry in zip(volumes, written):
        if volume is None or entry is None:
            if volume is not entry:
                return False
            continue
        array, geometry, name = volume
        if entry["source"] != name or any(list(value) != list(entry.get(key, ())) for key, value in geometry.items()):
            return False
        try:
            stored = np.load(entry["path"], mmap_mode="r")
        except (OSError, ValueError):
            return False
        if stored.dtype != array.dtype or stored.shape != array.shape or not np.array_equal(stored, array):
            return False
    return True


def _image(array: np.ndarray, geometry: dict) -> sitk.Image:
    """A SimpleITK image holding a copy of ``array`` ((k, j, i)) with ``geometry`` (spacing, origin, direction)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def case_inputs(volumes: list[dict | None], kind: str):
    """The worker's side of :func:`write_inputs`: the case's checked inputs (sources are the node names) and
    result.json's ``inputs`` entry. Voxel types of at most 16 bits stay as the scene holds them (no float32 copy:
    ``check_image``'s ``keep_type``), others are float32 as read from files."""
    from BreastCMSLLib.pipeline.preprocess import CaseInputs
    from BreastCMSLLib.pipeline.volumes import check_image

    def load(entry: dict | None) -> sitk.Image | None:
        if entry is None:
            return None
        try:
            array = np.load(entry["path"], mmap_mode="r")
        except (OSError, ValueError) as err:
            raise InputError(entry["source"], f"its voxels could not be read ({err})") from None
        return check_image(_image(array, entry), entry["source"], keep_type=True)

    with ThreadPoolExecutor(2) as pool:  # the first failing volume, in this order, is the error reported
        images = list(pool.map(load, volumes))
    sources = [None if entry is None else entry["source"] for entry in volumes]
    inputs = CaseInputs(images[0], images[1:], kind, sources)
    return inputs, {"kind": kind, "t1": sources[0], "series": sources[1:]}


def write_result(analysis, out_dir: Path, inputs_used: dict, centre_lps=None, extra: dict | None = None,
                 fields: dict | None = None) -> dict:
    """The worker's output for the session, in place of
    :func:`~BreastCMSLLib.pipeline.output.write_analysis` (same signature): result.json, each map and labelmap as
    ``<name>.npy`` ((k, j, i) on the reference grid) and the ``extra`` files; returns result.json's dict."""
    from BreastCMSLLib.pipeline.output import result_dict

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [(name, getattr(analysis, name)) for name in RESULT_ARRAYS if getattr(analysis, name) is not None]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda item: np.save(out_dir / f"{item[0]}.npy", sitk.GetArrayViewFromImage(item[1])), images))
    for name, write in (extra or {}).items():
        write(out_dir / name)
    analysis.timings["write_s"] = time.perf_counter() - t0
    result = {**result_dict(analysis, inputs_used, centre_lps), **(fields or {})}
    (out_dir / "result.json").write_text(json.dumps(result))
    return result


def holds_arrays(out_dir: Path) -> bool:
    """Whether ``out_dir`` is :func:`write_result`'s output (else an analyze output folder of image files)."""
    return (Path(out_dir) / "coam.npy").is_file()


def read_result(out_dir: Path) -> tuple[dict, dict[str, sitk.Image]]:
    """result.json and every map and labelmap of :func:`write_result`'s output as images on the reference grid
    (the geometry result.json records), as :func:`BreastCMSLLib.mrml.nodes.read_result_folder` gives them."""
    out_dir = Path(out_dir)
    try:
        result = json.loads((out_dir / "result.json").read_text())
        geometry = result["reference_geometry"]
        names = [name for name in RESULT_ARRAYS if f"{name.removesuffix('_label')}_peak_lps" in result]
        with ThreadPoolExecutor(2) as pool:  # SimpleITK's copies release the GIL
            images = pool.map(lambda name: _image(np.load(out_dir / f"{name}.npy", mmap_mode="r"), geometry), names)
            maps = dict(zip(names, images))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(out_dir, f"is not a complete analysis output ({err})") from None
    return result, maps
