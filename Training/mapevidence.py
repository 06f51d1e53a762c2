"""What COAM and CAM are built from, per case, on the network's final feature grid (evidence, not a method).

COAM (Eq. 5) is computed from x, layer4's output after its last block's final ReLU (x >= 0, so every Gram
entry x_i . x_j >= 0 and M_i = x_i . sum_j x_j); CAM is the head's logit w . x_i + b. For one analyzed case
this module measures, on the feature grid: the rank of the lesion's feature cell (1 = the map's maximum)
in COAM, CAM, COAM of the activations *before* that ReLU (a diagnostic, not the method) and the feature
norm |x_i|; the Pearson correlation over the cells of COAM with |x_i|^2 and with CAM; the fraction of zero
activations; and the fraction of negative off-diagonal Gram entries before the ReLU.
"""

from __future__ import annotations

import numpy as np
import torch

from BreastCMSLLib.network.attention import coam
from BreastCMSLLib.network.modelfile import LoadedModel
from BreastCMSLLib.pipeline.analyze import forward, select_device
from BreastCMSLLib.pipeline.maps import Analysis

FIELDS = ("subject_id", "cells", "rank_coam", "rank_cam", "rank_coam_pre_relu", "rank_norm", "corr_coam_norm2",
          "corr_coam_cam", "zero_fraction", "pre_relu_negative_gram_fraction")


def rank_of(values: torch.Tensor, cell: tuple[int, int, int]) -> int:
    """1 + the number of cells whose value exceeds that of ``cell`` (1: the cell holds the maximum)."""
    return 1 + int((values > values[cell]).sum())


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation over the cells (NaN when a map is constant)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def last_block_activations(loaded: LoadedModel, array: np.ndarray, device: str = "auto"):
    """One inference pass; returns (output, the last block's input to its final ReLU (C, d, h, w))."""
    dev = select_device(device)
    act = loaded.inference_module(dev).backbone.layer4[-1].act
    seen: list[torch.Tensor] = []
    handle = act.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float().clone()))
    try:
        out, _ = forward(loaded, array, dev)
    finally:
        handle.remove()
    return out, seen[-1][0].cpu()  # the block calls act twice; the last call is ReLU(out + residual)


def case_evidence(subject_id: str, loaded: LoadedModel, analysis: Analysis, cell: tuple[int, int, int],
                  device: str = "auto") -> dict:
    """The evidence of one case (see the module docstring) for the lesion's feature cell ``cell`` (i, j, k)."""
    out, pre = last_block_activations(loaded, analysis.prep.array, device)
    x = out.features[0].float().cpu()
    coam_map, coam_pre = coam(x[None])[0], coam(pre[None])[0]
    cam_map = out.logit_map[0].float().cpu()
    norm2 = (x * x).sum(dim=0)
    p = pre.flatten(1)
    gram = p.T @ p
    off = ~torch.eye(gram.shape[0], dtype=torch.bool)
    return {"subject_id": subject_id, "cells": int(norm2.numel()), "rank_coam": rank_of(coam_map, cell),
            "rank_cam": rank_of(cam_map, cell), "rank_coam_pre_relu": rank_of(coam_pre, cell),
            "rank_norm": rank_of(norm2, cell), "corr_coam_norm2": _corr(coam_map, norm2),
            "corr_coam_cam": _corr(coam_map, cam_map), "zero_fraction": float((x == 0).float().mean()),
            "pre_relu_negative_gram_fraction": float((gram[off] < 0).float().mean()) if off.any() else float("nan")}
