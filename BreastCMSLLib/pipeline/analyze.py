"""Analysis of one case: preprocessing, one forward pass, COAM, CAM and the fine map carried back to the
reference grid.

Peaks are LPS millimetres. Maps are float32 in [0, 1] on the reference input's grid (the first
subtraction or first post-contrast phase, as stored); labelmaps are uint8 {0, 1} on the same grid.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from BreastCMSLLib.config import FINE_MAP, NETWORK_STRIDE, STAGE_STRIDES, FineMapConfig, ModelConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.attention import coam, fine_map
from BreastCMSLLib.network.calibration import Calibration, score
from BreastCMSLLib.network.modelfile import LoadedModel
from BreastCMSLLib.network.net import NetOutput, bf16_native, probability
from BreastCMSLLib.network.sparse import nonzero_box, union_box
from BreastCMSLLib.pipeline.peaks import centroid_peak, plateau_peak_lps, quadratic_peak, stage_point_lps
from BreastCMSLLib.pipeline.preprocess import CaseInputs, Preprocessed, preprocess_case, to_reference

Progress = Callable[[float, str], None]


def select_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cpu``; ``cuda`` or ``cuda:N`` of an existing GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if not match:
        raise InputError("--device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise InputError("--device", f"{device} requested but {torch.cuda.device_count()} CUDA devices exist")
    return torch.device(device)


def check_channels(inputs: CaseInputs, cfg: ModelConfig, model_name: str) -> None:
    """The model takes ``cfg.in_channels`` subtraction channels; the inputs must give exactly that."""
    if inputs.n_channels != cfg.in_channels:
        raise InputError(inputs.reference_source, f"the model {model_name} takes {cfg.in_channels} subtraction "
                         f"channels, these inputs give {inputs.n_channels}")


def host_input(arrays: list[np.ndarray], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """The (B, C, I, J, K) network input of B same-shaped (C, I, J, K) arrays on the host, cast to ``dtype``
    (the dtype autocast gives conv1) and laid out channels_last_3d, one multi-threaded pass per array; in
    page-locked memory when ``pin``."""
    staged = torch.empty((len(arrays), *arrays[0].shape), dtype=dtype, pin_memory=pin,
                         memory_format=torch.channels_last_3d)
    for slot, array in zip(staged, arrays, strict=True):
        slot.copy_(torch.from_numpy(array))
    return staged


def network_input(arrays: list[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The network input on ``device``. For CUDA the cast to bf16 happens on the host into pinned memory, so half
    the bytes of float32 cross the bus in one direct DMA copy instead of float32 through a pageable staging
    buffer (the H2D copy was most of the GPU inference step: ``benchmarks/README.md``)."""
    if device.type != "cuda":
        return host_input(arrays, dtype, pin=False)
    return host_input(arrays, dtype, pin=True).to(device, non_blocking=True)


def forward(loaded: LoadedModel, array: np.ndarray, device: torch.device,
            keep_stages: bool = False) -> tuple[NetOutput, str]:
    """One inference pass on a (C, I, J, K) array (:func:`forward_batch` of one)."""
    return forward_batch(loaded, [array], device, keep_stages)


def forward_batch(loaded: LoadedModel, arrays: list[np.ndarray], device: torch.device,
                  keep_stages: bool = False) -> tuple[NetOutput, str]:
    """One inference pass on B same-shaped (C, I, J, K) arrays with the BN-folded channels_last_3d network
    (conv1 only around the arrays' non-zero voxels, their union box, :mod:`.sparse`), under
    bf16 autocast where the device runs bf16 natively (its accuracy against float32: ``benchmarks/README.md``),
    else float32. ``keep_stages``: the output also holds layer2's and layer3's activations (the fine map's).
    Returns the output (batch dimension B) and the precision used ("bf16" or "fp32")."""
    module = loaded.inference_module(device)
    bf16 = bf16_native(device)
    x = network_input(arrays, device, torch.bfloat16 if bf16 else torch.float32)
    box = nonzero_box(arrays[0]) if len(arrays) == 1 else union_box([nonzero_box(a) for a in arrays])
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return module(x, box, keep_stages), "bf16" if bf16 else "fp32"


def upsample_linear(small: np.ndarray, size: tuple[int, int, int], stride: int = NETWORK_STRIDE) -> np.ndarray:
    """A (d, h, w) map on a feature grid of ``stride`` input voxels per voxel (layer4's: 32), linearly
    interpolated onto an input grid of ``size`` (I, J, K) voxels and constant beyond the outer feature centres.
    Returns float32 (I, J, K), stored with k slowest (as :func:`~BreastCMSLLib.pipeline.preprocess.to_ijk`).

    Every stage of the network (conv1 k7 s2 p3, max pooling k3 s2 p1, the k3 s2 p1 and k1 s2 shortcut
    convolutions) centres output o on input 2 o, so feature voxel f is centred on input voxel ``stride`` f: the
    feature grid has the input grid's direction and ``stride`` times its spacing, and trilinear interpolation in
    physical space is a linear pass per index axis. Each pass computes a + (b - a) w with exact weights
    (``stride`` is a power of two), so a plateau of equal features stays exactly equal; written by hand because
    SimpleITK's resampler maps every voxel through physical space, three times slower for the same values (to
    float32 rounding).
    """
    x = np.ascontiguousarray(np.asarray(small, np.float32).T)  # (w, h, d): k slowest, as the result
    for axis, n in ((2, size[0]), (1, size[1]), (0, size[2])):  # i, j, then whole k planes
        position = np.arange(n) / stride
        last = x.shape[axis] - 1
        lo = np.minimum(np.floor(position).astype(np.intp), last)
        weight = (position - lo).astype(np.float32).reshape([n if a == axis else 1 for a in range(3)])
        start = np.take(x, lo, axis)
        x = np.take(x, np.minimum(lo + 1, last), axis)
        x -= start
        x *= weight
        x += start
    return x.T


def normalized_on_input_grid(small: torch.Tensor, prep: Preprocessed, stride: int = NETWORK_STRIDE) -> np.ndarray:
    """A feature-grid map (``stride`` input voxels per voxel) carried linearly onto the input grid
    (:func:`upsample_linear`), min-max normalized to [0, 1] over the voxels inside the reference volume, 0
    elsewhere. Returns float32 (I, J, K)."""
    up = upsample_linear(small.float().cpu().numpy(), prep.input_grid.GetSize(), stride)
    everywhere = bool(prep.valid.all())  # the usual crop: the input grid lies inside the reference volume
    inside = up if everywhere else up[prep.valid]
    lo, hi = float(inside.min()), float(inside.max())
    if hi <= lo:
        return np.zeros_like(up)
    up -= lo
    up *= 1.0 / (hi - lo)
    if not everywhere:
        up[~prep.valid] = 0.0
    return up


def peak_lps(map_ijk: np.ndarray, prep: Preprocessed) -> tuple[float, float, float]:
    """LPS point (mm) of the map's maximum over the valid input-grid voxels; a plateau of maxima resolves
    to the voxel nearest its centroid (:mod:`BreastCMSLLib.pipeline.peaks`), whatever the storage order."""
    return plateau_peak_lps(map_ijk, prep.input_grid, None if prep.valid.all() else prep.valid)


def stage_peak_lps(small: np.ndarray, stride: int, rule: str, prep: Preprocessed,
                   on_input: np.ndarray | None = None) -> tuple[float, float, float]:
    """LPS point (mm) of a feature-grid map's peak by ``rule``: "node" (the input-grid maximum of ``on_input``,
    :func:`peak_lps`), "quadratic" or "centroid" (sub-cell estimates on the feature grid,
    :mod:`BreastCMSLLib.pipeline.peaks`; ``stride`` input voxels per feature voxel)."""
    if rule == "node":
        return peak_lps(normalized_on_input_grid(torch.from_numpy(small), prep, stride) if on_input is None
                        else on_input, prep)
    index = quadratic_peak(small) if rule == "quadratic" else centroid_peak(small)
    return stage_point_lps(index, stride, prep.input_grid)


def grid_maps(out: NetOutput, b: int = 0) -> dict[str, np.ndarray]:
    """Every map of case ``b`` of one forward on its own feature grid, float32 (d, h, w) in (i, j, k) order:
    "coam" and "cam" (layer4; the head's per-position logit is CAM), and, when the output kept the shallower
    stages, "coam_layer3" and "coam_layer2"."""
    maps = {"coam": coam(out.features[b:b + 1])[0], "cam": out.logit_map[b]}
    for stage, x in (out.stages or {}).items():
        maps[f"coam_{stage}"] = coam(x[b:b + 1])[0]
    return {k: v.float().cpu().numpy() for k, v in maps.items()}


def fine_on_grid(maps: dict[str, np.ndarray], cfg: FineMapConfig) -> np.ndarray:
    """The fine map (:func:`BreastCMSLLib.network.attention.fine_map`) on ``cfg.stage``'s grid from
    :func:`grid_maps`."""
    ratio = NETWORK_STRIDE // STAGE_STRIDES[cfg.stage]
    local = torch.from_numpy(maps[f"coam_{cfg.stage}"])
    return fine_map(local, torch.from_numpy(maps["coam"]), ratio, cfg.gated).numpy()


@dataclass
class Analysis:
    """Everything ``breastcmsl analyze`` reports for one case (maps on the reference grid). The ``fine*``
    fields are None when the fine map was not asked for."""

    probability: float  # calibrated: sigmoid(score / T) with the model file's temperature (T = 1 without one)
    cos_theta: float
    logit: float
    prediction: str  # "malignant" when probability >= threshold
    probability_uncalibrated: float  # sigmoid(score): the network's own output
    threshold: float  # the model's operating point on the calibrated probability
    calibration: Calibration
    coam: sitk.Image
    cam: sitk.Image
    coam_label: sitk.Image
    cam_label: sitk.Image
    coam_peak_lps: tuple[float, float, float]
    cam_peak_lps: tuple[float, float, float]
    device: str
    precision: str
    model: dict
    label_fraction: float
    prep: Preprocessed
    coam_input: np.ndarray  # (I, J, K) on the input grid, for figures
    cam_input: np.ndarray
    mask_source: str  # what the breast mask came from: "t1", or "pre" (no T1; CaseInputs.mask_source)
    timings: dict = field(default_factory=dict)
    fine: sitk.Image | None = None
    fine_label: sitk.Image | None = None
    fine_peak_lps: tuple[float, float, float] | None = None
    fine_input: np.ndarray | None = None
    fine_config: FineMapConfig | None = None
    grid_maps: dict = field(default_factory=dict)  # :func:`grid_maps`, for the localization study


def labelmap(image: sitk.Image, fraction: float) -> sitk.Image:
    """uint8 {0, 1}: 1 where the map is >= fraction x its maximum."""
    top = float(sitk.GetArrayViewFromImage(image).max())
    return sitk.Cast(sitk.GreaterEqual(image, fraction * top), sitk.sitkUInt8)


def prepare(inputs: CaseInputs, config: ModelConfig, model_name: str, label_fraction: float = 0.5,
            out: np.ndarray | None = None) -> Preprocessed:
    """Check the inputs against the model (``config``, named ``model_name``) and preprocess them (the network
    input into ``out`` when given): the first stage of :func:`analyze_case`, free of the network (the cohort
    runner calls it in worker processes)."""
    check_channels(inputs, config, model_name)
    if not 0.0 < label_fraction <= 1.0:
        raise InputError("--label-fraction", f"must be in (0, 1], got {label_fraction}")
    return preprocess_case(inputs, config.preprocess, out)


@dataclass
class NetResult:
    """What one case's maps and scores need from the forward pass, on the CPU: every map on its own feature
    grid (:func:`grid_maps`), the fine map's configuration (None: no fine map), the scores (``probability``
    calibrated with the model's ``calibration``), and the device and precision it ran with."""

    maps: dict[str, np.ndarray]
    fine: FineMapConfig | None
    probability: float
    probability_uncalibrated: float
    cos_theta: float
    logit: float
    calibration: Calibration
    device: str
    precision: str


def infer(loaded: LoadedModel, arrays: list[np.ndarray], dev: torch.device,
          fine: FineMapConfig | None = FINE_MAP) -> list[NetResult]:
    """The second stage: one forward pass over the preprocessed arrays of B cases (:func:`forward_batch`),
    keeping layer2/layer3 when the fine map is asked for."""
    out, precision = forward_batch(loaded, arrays, dev, keep_stages=fine is not None)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    with torch.inference_mode():
        p = probability(out, loaded.config)
        calibrated = loaded.calibration.probability(score(out, loaded.config))
        return [NetResult(grid_maps(out, b), fine, float(calibrated[b]), float(p[b]), float(out.cos_theta[b]),
                          float(out.logit[b]), loaded.calibration, str(dev), precision) for b in range(len(arrays))]


def finish(prep: Preprocessed, net: NetResult, model: dict, mask_source: str, label_fraction: float = 0.5,
           timings: dict | None = None) -> Analysis:
    """The last stage: COAM, CAM and the fine map carried back to the reference grid, labelmaps and peaks.
    ``model`` is :meth:`LoadedModel.info`; ``timings`` (seconds per stage so far) gains ``maps_s``. Needs no
    network."""
    t2 = time.perf_counter()
    maps, fine = net.maps, net.fine
    small = {"coam": (maps["coam"], NETWORK_STRIDE), "cam": (maps["cam"], NETWORK_STRIDE)}
    if fine is not None:
        small["fine"] = (fine_on_grid(maps, fine), STAGE_STRIDES[fine.stage])

    def carried(name: str) -> tuple[np.ndarray, sitk.Image, sitk.Image, tuple[float, float, float]]:
        feature_map, stride = small[name]
        on_input = normalized_on_input_grid(torch.from_numpy(feature_map), prep, stride)
        on_reference = to_reference(on_input, prep)
        rule = fine.peak if name == "fine" else "node"
        return (on_input, on_reference, labelmap(on_reference, label_fraction),
                stage_peak_lps(feature_map, stride, rule, prep, on_input))

    with ThreadPoolExecutor(2) as pool:  # SimpleITK and numpy release the GIL: two maps at once
        done = dict(zip(small, pool.map(carried, small), strict=True))
    per_map = {f"{name}{part}": value for name, carried_map in done.items()
               for part, value in zip(("_input", "", "_label", "_peak_lps"), carried_map, strict=True)}
    threshold = net.calibration.operating_point.threshold
    t3 = time.perf_counter()
    return Analysis(
        probability=net.probability,
        cos_theta=net.cos_theta,
        logit=net.logit,
        prediction="malignant" if net.probability >= threshold else "benign",
        probability_uncalibrated=net.probability_uncalibrated,
        threshold=threshold,
        calibration=net.calibration,
        device=net.device,
        precision=net.precision,
        model=model,
        label_fraction=label_fraction,
        prep=prep,
        mask_source=mask_source,
        timings={**(timings or {}), "maps_s": t3 - t2},
        fine_config=fine,
        grid_maps=maps,
        **per_map,
    )

def analyze_case(inputs: CaseInputs, loaded: LoadedModel, device: str = "auto", label_fraction: float = 0.5,
                 progress: Progress | None = None, fine: FineMapConfig | None = FINE_MAP) -> Analysis:
    """Preprocess, run the network once and build COAM, CAM and (unless ``fine`` is None) the fine map on the
    reference grid: :func:`prepare`, :func:`infer` and :func:`finish` in turn.

    ``progress(fraction, stage)`` is called before each stage (preprocess, inference, maps).
    """
    report = progress or (lambda fraction, stage: None)
    dev = select_device(device)
    report(0.1, "preprocess")
    t0 = time.perf_counter()
    prep = prepare(inputs, loaded.config, loaded.name, label_fraction)
    report(0.4, "inference")
    t1 = time.perf_counter()
    net = infer(loaded, [prep.array], dev, fine)[0]
    report(0.8, "maps")
    t2 = time.perf_counter()
    return finish(prep, net, loaded.info(), inputs.mask_source, label_fraction,
                  {"preprocess_s": t1 - t0, "inference_s": t2 - t1})
