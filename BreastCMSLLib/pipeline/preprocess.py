"""One-case preprocessing: canonical axial grid, breast mask, masked subtractions, crop/pad, and back.

The breast mask comes from the non-fat-suppressed T1 when the case has one (``mask_source`` ``"t1"``),
else from the fat-suppressed pre-contrast phase (``"pre"``), see :mod:`.mask`. Subtractions without a
T1 (``"sub"``) are refused: a subtraction shows enhancing tissue only, no body outline and no chest
wall (the fat-suppressed method on the mean of a phantom's six subtractions gave Dice 0.00-0.01
against the truth, 4 cases), and an unmasked input would let the heart dominate.

Frames: every volume keeps its own LPS geometry until it is resampled onto the *input grid*, an
axial LPS grid (the reference volume's grid reoriented with ``DICOMOrient``, optionally at another
spacing) cropped or padded to ``input_size`` around the breast mask. Crop, pad, reorientation and
resampling are therefore one ``sitk.Resample`` forward and one back (:func:`to_reference`); where
voxel centres coincide (no spacing change) both directions copy voxels exactly (:mod:`.grids`).
Arrays are (C, I, J, K): spatial axes in (i, j, k) order of the input grid.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.config import NETWORK_STRIDE, ModelConfig, PreprocessConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.domain import StudyGeometry
from BreastCMSLLib.pipeline.breasts import breast_half, mirrored, unit_breast
from BreastCMSLLib.pipeline.envelope import study_geometry
from BreastCMSLLib.pipeline.grids import copy_onto, coverage, image_from_ijk, overlap_box, resample, values_on
from BreastCMSLLib.pipeline.mask import breast_mask
from BreastCMSLLib.pipeline.model_phases import PhasesUsed, choose
from BreastCMSLLib.pipeline.phase_times import case_times
from BreastCMSLLib.pipeline.volumes import find_case_files, read_volume


@dataclass
class CaseInputs:
    """Checked input volumes of one case, in LPS as stored.

    ``kind == "subtractions"``: ``series`` are the N subtraction volumes; ``"phases"``: ``series`` is
    pre-contrast then N post-contrast phases. ``t1`` (the non-fat-suppressed T1) may be None. ``sources``
    names t1 then each series volume (files or nodes); ``sources[0]`` is None when there is no T1.
    Voxels are float32, or (the warm worker's inputs, :func:`~BreastCMSLLib.panel.exchange.case_inputs`) a type of
    at most 16 bits whose values float32 holds exactly, which preprocessing converts to float32 as it copies them.
    Construction checks the combination and raises :class:`InputError`.
    """

    t1: sitk.Image | None
    series: list[sitk.Image]
    kind: str
    sources: list[str | None]
    extra: dict | None = None

    def __post_init__(self) -> None:
        first = next((s for s in self.sources if s is not None), "inputs")
        if self.kind not in ("subtractions", "phases"):
            raise InputError(first, f"unknown input kind {self.kind!r} (subtractions or phases)")
        if len(self.sources) != 1 + len(self.series) or (self.t1 is None) != (self.sources[0] is None):
            raise ValueError("sources must name the T1 (None without one) and every series volume")
        if self.kind == "phases" and len(self.series) < 2:
            raise InputError(self.sources[-1], "phases need a pre-contrast and at least one post-contrast volume")
        if not self.series:
            raise InputError(first, "no subtraction volumes given")

    @property
    def mask_source(self) -> str:
        """What the breast mask is made from: ``"t1"``, ``"pre"`` (no T1) or ``"sub"`` (no T1, subtractions:
        refused by :meth:`mask_volume`)."""
        return "t1" if self.t1 is not None else ("pre" if self.kind == "phases" else "sub")

    def mask_volume(self) -> tuple[sitk.Image, str]:
        """The volume the breast mask is made from (see :attr:`mask_source`) and the source that names it."""
        if self.t1 is not None:
            return self.t1, self.sources[0]
        if self.kind == "phases":
            return self.series[0], self.sources[1]
        raise InputError(self.sources[1], "subtractions without a T1: no volume to make the breast mask from "
                         "(a subtraction shows no body outline or chest wall); add the T1 or give the pre- and "
                         "post-contrast phases")

    @property
    def n_channels(self) -> int:
        return len(self.series) - (1 if self.kind == "phases" else 0)

    @property
    def reference(self) -> sitk.Image:
        """The first subtraction, or the first post-contrast phase: every output map lands on its grid."""
        return self.series[1] if self.kind == "phases" else self.series[0]

    @property
    def reference_source(self) -> str:
        return self.sources[2] if self.kind == "phases" else self.sources[1]


def load_inputs(t1: str | Path | None, series: list[str | Path], kind: str, extra: dict | None = None) -> CaseInputs:
    """Read and check the volumes of one case (see :class:`CaseInputs` for ``kind``; ``t1`` may be None)."""
    paths = [None if t1 is None else Path(t1), *map(Path, series)]
    # SimpleITK's reader and numpy's checks release the GIL: the volumes are read in parallel (the first
    # unreadable one, in this order, is the error reported)
    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda p: None if p is None else read_volume(p), paths))
    return CaseInputs(images[0], images[1:], kind, [None if p is None else str(p) for p in paths], extra)


def load_case(case_dir: str | Path) -> CaseInputs:
    """Read a case folder ([t1] + pre/post_k or sub_k, any SimpleITK suffix)."""
    files = find_case_files(case_dir)
    return load_inputs(files.t1, files.series, files.kind, files.extra)


@dataclass
class Preprocessed:
    """The network input of one case and what is needed to carry maps back.

    ``array``: float32 (C, I, J, K) in [0, 1]; ``input_grid``: uint8 breast mask on the input grid (its
    geometry is the input grid's); ``reference``: an image with the reference input's geometry;
    ``valid``: bool (I, J, K), True where the input grid lies inside the reference volume; ``study``: what the
    training-domain check compares (:mod:`.envelope`; None until :func:`prepare` measures it).
    """

    array: np.ndarray
    input_grid: sitk.Image
    reference: sitk.Image
    valid: np.ndarray
    study: StudyGeometry | None = None

    @property
    def inside(self) -> tuple[slice, slice, slice] | np.ndarray:
        """``valid`` as a box of (I, J, K) slices where the input grid's lattice is the reference's or ``valid``
        holds every voxel (an array indexed with it is a view, no copy), else ``valid`` itself."""
        box = overlap_box(self.reference, self.input_grid)
        if box is None and self.valid.all():
            box = tuple(slice(0, n) for n in self.valid.shape)
        return self.valid if box is None else box

    def __getstate__(self) -> dict:
        """Pickled small (the cohort sends it between processes twice per case): the breast mask and ``valid``
        bit-packed, ``reference`` as its geometry only (29 MB at the paper's size -> 2.4 MB)."""
        mask = sitk.GetArrayViewFromImage(self.input_grid)
        return {"array": self.array, "mask": (np.packbits(mask), _geometry(self.input_grid)),
                "reference": _geometry(self.reference), "valid": (np.packbits(self.valid), self.valid.shape),
                "study": self.study}

    def __setstate__(self, state: dict) -> None:
        bits, geometry = state["mask"]
        size = geometry[0]
        mask = np.unpackbits(bits, count=int(np.prod(size))).reshape(size[::-1])
        self.input_grid = sitk.GetImageFromArray(mask)
        _set_geometry(self.input_grid, geometry)
        self.reference = sitk.Image(state["reference"][0], sitk.sitkUInt8)
        _set_geometry(self.reference, state["reference"])
        bits, shape = state["valid"]
        self.valid = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
        self.array = state["array"]
        self.study = state["study"]


def _geometry(image: sitk.Image) -> tuple:
    """(size, spacing, origin, direction) of ``image``."""
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _set_geometry(image: sitk.Image, geometry: tuple) -> None:
    """Give ``image`` (already of that size) the spacing, origin and direction of ``geometry``."""
    image.SetSpacing(geometry[1])
    image.SetOrigin(geometry[2])
    image.SetDirection(geometry[3])


def to_ijk(image: sitk.Image) -> np.ndarray:
    """A copy of the voxel array in (i, j, k) order (SimpleITK's own arrays are (k, j, i)). A copy, not a
    view: a view of a temporary image would point at freed memory."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def geometry_proxy(image: sitk.Image) -> sitk.Image:
    """A uint8 image of zeros with ``image``'s geometry (size, spacing, origin, direction)."""
    proxy = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    proxy.CopyInformation(image)
    return proxy


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box (mm) of the volume's voxel extent (voxel edges, not centres)."""
    size = np.array(image.GetSize())
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([(-0.5 if c == 0 else s - 0.5) for c, s in zip(bits, size)])
        for bits in np.ndindex(2, 2, 2)
    ]
    pts = np.array(corners)
    return pts.min(axis=0), pts.max(axis=0)


def canonical_grid(reference: sitk.Image, spacing: tuple[float, float, float] | None) -> sitk.Image:
    """The reference grid reoriented to axial LPS (``DICOMOrient``), optionally at another spacing (mm)."""
    canon = sitk.DICOMOrient(geometry_proxy(reference), "LPS")
    if spacing is None:
        return canon
    old_sp, new_sp = np.array(canon.GetSpacing()), np.array(spacing, dtype=float)
    size = np.maximum(1, np.round(np.array(canon.GetSize()) * old_sp / new_sp)).astype(int)
    direction = np.array(canon.GetDirection()).reshape(3, 3)
    # keep the outer voxel edge where it was: the first centre moves by half the spacing change
    origin = np.array(canon.GetOrigin()) + direction @ ((new_sp - old_sp) / 2)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(new_sp.tolist())
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(canon.GetDirection())
    return grid


def check_overlap(inputs: CaseInputs) -> None:
    """Every volume must share physical space with the reference volume."""
    ref_lo, ref_hi = physical_bounds(inputs.reference)
    for image, source in zip([inputs.t1, *inputs.series], inputs.sources, strict=True):
        if image is None:
            continue
        lo, hi = physical_bounds(image)
        if np.any(lo >= ref_hi) or np.any(hi <= ref_lo):
            raise InputError(
                source,
                f"does not overlap the reference volume {inputs.reference_source} (LPS extent "
                f"{np.round(lo, 1).tolist()}..{np.round(hi, 1).tolist()} mm vs "
                f"{np.round(ref_lo, 1).tolist()}..{np.round(ref_hi, 1).tolist()} mm)",
            )


def crop_window(mask: np.ndarray, size: tuple[int, int, int]) -> tuple[int, int, int]:
    """Start index of a ``size`` window centred on the mask's bounding box, kept inside the volume.

    Where the volume is larger than the window it crops (window inside the volume); where it is smaller
    it pads (volume inside the window). ``mask`` is (I, J, K).
    """
    start = []
    for axis, n in enumerate(size):
        dim = mask.shape[axis]
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        centre = (hits[0] + hits[-1] + 1) / 2 if hits.size else dim / 2
        lo, hi = min(0, dim - n), max(0, dim - n)
        start.append(int(np.clip(np.floor(centre - n / 2), lo, hi)))
    return tuple(start)


def preprocess_case(inputs: CaseInputs, cfg: PreprocessConfig, out: np.ndarray | None = None) -> Preprocessed:
    """Breast mask, masked subtractions clipped and scaled to [0, 1], on the cropped/padded input grid; the
    network input is written into ``out`` (float32 (C, I, J, K)) when given.

    Intensity rule: subtractions (post_k - pre, or as given) are masked, clipped below at 0 (no
    enhancement) and above at the ``clip_percentile`` of all masked voxels of all channels together,
    then divided by that value: one scale per case keeps the kinetic curve shape across phases.
    """
    check_overlap(inputs)
    canon = canonical_grid(inputs.reference, cfg.spacing)
    too_small = [n for n in canon.GetSize() if n < NETWORK_STRIDE]
    if too_small:
        raise InputError(inputs.reference_source, f"volume size {canon.GetSize()} is smaller than the network "
                         f"can take (at least {NETWORK_STRIDE} voxels along every axis)")
    volume, source = inputs.mask_volume()
    mask_canon = breast_mask(resample(volume, canon), cfg.mask, fat_suppressed=inputs.t1 is None)
    mask_ijk = to_ijk(mask_canon)
    if not mask_ijk.any():
        raise InputError(source, f"the breast mask (mask_source {inputs.mask_source}) found no breast in this volume")
    breast = unit_breast(inputs.extra, cfg.unit, inputs.reference_source)
    if breast is not None:  # one breast: the other one's half of the mask is dropped (pipeline/breasts.py)
        mask_ijk = breast_half(mask_ijk, breast)
        if not mask_ijk.any():
            raise InputError(source, f"the breast mask found no {breast} breast")
        mask_canon = image_from_ijk(mask_ijk.astype(np.uint8), canon)

    start = crop_window(mask_ijk, cfg.input_size)
    if breast == "left":  # the window a right breast would get, on the mask seen mirrored
        mirror_start = crop_window(mask_ijk[::-1], cfg.input_size)
        start = (mask_ijk.shape[0] - mirror_start[0] - cfg.input_size[0], *mirror_start[1:])
    grid = sitk.Image(list(cfg.input_size), sitk.sitkUInt8)
    grid.SetSpacing(canon.GetSpacing())
    grid.SetDirection(canon.GetDirection())
    grid.SetOrigin(canon.TransformContinuousIndexToPhysicalPoint([float(s) for s in start]))
    if breast == "left":
        grid = mirrored(grid)
    mask = values_on(mask_canon, grid, label=True)
    array = np.empty((inputs.n_channels, *cfg.input_size), dtype=np.float32) if out is None else out
    phases = inputs.kind == "phases"
    series = inputs.series[1:] if phases else inputs.series
    # numpy's copies and SimpleITK release the GIL: the pre-contrast phase, the mask's image and the channels are
    # made in parallel (the pre-contrast phase first: each channel waits for it before its subtraction)
    with ThreadPoolExecutor(min(len(series), os.cpu_count() or 1)) as pool:
        pre = pool.submit(values_on, inputs.series[0], grid) if phases else None
        mask_grid = pool.submit(image_from_ijk, mask, grid)
        mask = mask.astype(bool)

        def fill(c: int) -> None:
            values_on(series[c], grid, out=array[c])
            if pre is not None:
                np.subtract(array[c], pre.result(), out=array[c])
            np.multiply(array[c], mask, out=array[c])

        list(pool.map(fill, range(len(series))))
    mask_grid = mask_grid.result()
    inside = array[:, mask]
    upper = float(np.percentile(inside, cfg.clip_percentile, overwrite_input=True)) if inside.size else 0.0
    if upper <= 0:
        raise InputError(inputs.reference_source, "no contrast enhancement inside the breast mask "
                         "(all subtraction values <= 0)")
    np.clip(array, 0.0, upper, out=array)
    array /= upper
    return Preprocessed(array, mask_grid, geometry_proxy(inputs.reference), coverage(inputs.reference, grid))


def to_reference(array_ijk: np.ndarray, prep: Preprocessed) -> sitk.Image:
    """Carry an (I, J, K) array on the input grid back onto the reference input's grid (float32, linear;
    an exact voxel copy where the voxel centres coincide)."""
    out = np.empty(prep.reference.GetSize()[::-1], np.float32)  # (K, J, I): SimpleITK's order
    if copy_onto(array_ijk, prep.input_grid, prep.reference, out.T):
        image = sitk.GetImageFromArray(out)
        image.CopyInformation(prep.reference)
        return image
    return resample(image_from_ijk(np.asarray(array_ijk, np.float32), prep.input_grid), prep.reference)


def study_times(inputs: CaseInputs) -> tuple[float, ...] | None:
    """The post-contrast phase times (s after the injection) of a case: ``extra["post_s"]`` (a DICOM study's, set by
    :func:`BreastCMSLLib.run.run_analysis`), else the ``times.json`` beside its reference volume
    (:func:`~BreastCMSLLib.pipeline.phase_times.case_times`); None where the injection time is not given (times
    counted from the first post-contrast phase cannot be matched to a model's)."""
    if (inputs.extra or {}).get("post_s") is not None:
        return tuple(inputs.extra["post_s"])
    source = inputs.reference_source
    if source is None or not Path(source).is_file():
        return None
    times = case_times(Path(source).parent, inputs.n_channels)
    return times.post_s if times.injection_given else None


def model_phases(inputs: CaseInputs, cfg: ModelConfig | PreprocessConfig, model_name: str) -> PhasesUsed:
    """The post-contrast phases (or subtractions) a model takes of these inputs (:mod:`.model_phases`): an
    :class:`InputError` naming what the model needs when the study has too few. A ``PreprocessConfig``: a training
    cache's (its ``phases`` by number, or every phase)."""
    pcfg, channels = (cfg.preprocess, cfg.in_channels) if isinstance(cfg, ModelConfig) else (cfg, None)
    return choose(inputs.n_channels, study_times(inputs), pcfg, channels, inputs.reference_source, model_name)


def check_channels(inputs: CaseInputs, cfg: ModelConfig, model_name: str) -> None:
    """The model can take its ``cfg.in_channels`` channels from these inputs (:func:`model_phases`)."""
    model_phases(inputs, cfg, model_name)


def select_phases(inputs: CaseInputs, used: PhasesUsed) -> CaseInputs:
    """``inputs`` with only the post-contrast phases (or subtractions) of ``used`` (the pre-contrast phase kept)."""
    if used.phases == tuple(range(1, used.of + 1)):
        return inputs
    first = 1 if inputs.kind == "phases" else 0
    keep = list(range(first)) + [first + n - 1 for n in used.phases]
    return dataclasses.replace(inputs, series=[inputs.series[k] for k in keep],
                               sources=[inputs.sources[0], *(inputs.sources[1 + k] for k in keep)])


def prepare(inputs: CaseInputs, config: ModelConfig | PreprocessConfig, model_name: str, label_fraction: float = 0.5,
            out: np.ndarray | None = None) -> Preprocessed:
    """Take the phases the model (``config``, named ``model_name``) takes of the inputs (:func:`model_phases`),
    preprocess them (the network input into ``out`` when given) and measure what the training-domain check compares
    (``Preprocessed.study``): the first stage of :func:`~BreastCMSLLib.pipeline.analyze.analyze_case`, free of the
    network (the cohort runs it in worker processes); with a ``PreprocessConfig``, a training cache's case."""
    used = model_phases(inputs, config, model_name)
    if not 0.0 < label_fraction <= 1.0:
        raise InputError("--label-fraction", f"must be in (0, 1], got {label_fraction}")
    chosen = select_phases(inputs, used)
    pcfg = config.preprocess if isinstance(config, ModelConfig) else config
    prep = preprocess_case(chosen, pcfg, out)
    prep.study = study_geometry(chosen.reference, prep.array, prep.input_grid, used)
    return prep


def prepare_study(inputs: CaseInputs, config: ModelConfig, model_name: str,
                  label_fraction: float = 0.5) -> list[Preprocessed]:
    """The network inputs of a study for a model (:func:`prepare`): one; or, for a per-breast model (``unit``
    "breast") on a study that names no breast, the left then the right breast's. Free of torch, so that
    ``breastcmsl analyze`` preprocesses while torch is imported and the model loaded (:mod:`BreastCMSLLib.run`)."""
    if config.preprocess.unit == "breast" and not (inputs.extra or {}).get("breast"):
        return [prepare(dataclasses.replace(inputs, extra={**(inputs.extra or {}), "breast": side}), config,
                        model_name, label_fraction) for side in ("left", "right")]
    return [prepare(inputs, config, model_name, label_fraction)]
