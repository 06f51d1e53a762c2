"""Analysis of one case: preprocessing (:func:`~BreastCMSLLib.pipeline.preprocess.prepare`), one forward pass
with the maps on their feature grids (:func:`infer`, this module: the part that needs torch), then COAM, CAM and
the fine map carried back to the reference grid (:func:`~BreastCMSLLib.pipeline.maps.finish`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from BreastCMSLLib.config import FINE_MAP, NETWORK_STRIDE, STAGE_STRIDES, FineMapConfig
from BreastCMSLLib.distributed import device_index
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.attention import coam, fine_map
from BreastCMSLLib.network.calibration import score
from BreastCMSLLib.network.domain import DomainCheck
from BreastCMSLLib.network.modelfile import LoadedModel
from BreastCMSLLib.network.net import NetOutput, bf16_native, probability
from BreastCMSLLib.network.sparse import nonzero_box, union_box
from BreastCMSLLib.pipeline.bilateral import combine
from BreastCMSLLib.pipeline.maps import Analysis, NetResult, finish
from BreastCMSLLib.pipeline.preprocess import CaseInputs, Preprocessed, prepare_study

Progress = Callable[[float, str], None]


def select_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cpu``; ``cuda`` or ``cuda:N`` of an existing GPU."""
    index = device_index(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if index is not None and index >= torch.cuda.device_count():
        raise InputError("--device", f"{device} requested but {torch.cuda.device_count()} CUDA devices exist")
    return torch.device(device)


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
    (the stem only around the arrays' non-zero voxels, their union box, :mod:`.sparse`), under
    bf16 autocast where the device runs bf16 natively (its accuracy against float32: ``benchmarks/README.md``),
    else float32. ``keep_stages``: the output also holds layer2's and layer3's activations (the fine map's).
    Returns the output (batch dimension B) and the precision used ("bf16" or "fp32")."""
    module = loaded.inference_module(device)
    bf16 = bf16_native(device)
    x = network_input(arrays, device, torch.bfloat16 if bf16 else torch.float32)
    box = nonzero_box(arrays[0]) if len(arrays) == 1 else union_box([nonzero_box(a) for a in arrays])
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return module(x, box, keep_stages), "bf16" if bf16 else "fp32"


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


def infer(loaded: LoadedModel, arrays: list[np.ndarray], dev: torch.device,
          fine: FineMapConfig | None = FINE_MAP) -> list[NetResult]:
    """The second stage: one forward pass over the preprocessed arrays of B cases (:func:`forward_batch`),
    keeping layer2/layer3 and making the fine map on its grid when it is asked for (``fine``); each case's pooled
    feature is checked against the model's training domain (:mod:`BreastCMSLLib.network.domain`)."""
    out, precision = forward_batch(loaded, arrays, dev, keep_stages=fine is not None)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    with torch.inference_mode():
        p = probability(out, loaded.config)
        calibrated = loaded.calibration.probability(score(out, loaded.config))
        pooled = out.pooled.cpu().numpy()
        results = []
        for b in range(len(arrays)):
            maps = grid_maps(out, b)
            results.append(NetResult(maps, fine, None if fine is None else fine_on_grid(maps, fine),
                                     float(calibrated[b]), float(p[b]), float(out.cos_theta[b]), float(out.logit[b]),
                                     loaded.calibration, str(dev), precision,
                                     loaded.domain.check(pooled[b]) if loaded.domain is not None
                                     else DomainCheck(None, None, None, loaded.domain_problem)))
        return results


def analyze_case(inputs: CaseInputs, loaded: LoadedModel, device: str = "auto", label_fraction: float = 0.5,
                 progress: Progress | None = None, fine: FineMapConfig | None = FINE_MAP,
                 prepared: list[Preprocessed] | None = None) -> Analysis:
    """Preprocess, run the network once and build COAM, CAM and (unless ``fine`` is None) the fine map on the
    reference grid: :func:`~BreastCMSLLib.pipeline.preprocess.prepare_study`, :func:`infer` and :func:`finish` in
    turn. ``prepared``: that first stage's output, when the caller has already preprocessed (timings then without
    ``preprocess_s``).

    ``progress(fraction, stage)`` is called before each stage (preprocess, inference, maps). A per-breast model
    (``unit`` "breast") on a study that names no breast analyzes both breasts, each preprocessed as one unit (the
    left one mirrored), both in one forward pass, their analyses made one for the study (:func:`.bilateral.combine`).
    """
    report = progress or (lambda fraction, stage: None)
    dev = select_device(device)
    timings = {}
    if prepared is None:
        report(0.1, "preprocess")
        t0 = time.perf_counter()
        prepared = prepare_study(inputs, loaded.config, loaded.name, label_fraction)
        timings["preprocess_s"] = time.perf_counter() - t0
    report(0.4, "inference")
    t1 = time.perf_counter()
    nets = infer(loaded, [p.array for p in prepared], dev, fine)
    report(0.8, "maps")
    timings["inference_s"] = time.perf_counter() - t1
    analyses = [finish(p, n, loaded.info(), inputs.mask_source, label_fraction, timings)
                for p, n in zip(prepared, nets, strict=True)]
    return analyses[0] if len(analyses) == 1 else combine(*analyses)
