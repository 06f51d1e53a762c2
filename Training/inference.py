"""Network inputs from cached batches and batched prediction over a split (all ranks gathered)."""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.distributed import Dist, gather_objects

from . import fastconv
from .cache import SCALE
from .data import Augment, VolumeSource, augment_seed, to_device
from .methods import MethodConfig, Scores, forward


def network_input(u8: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor, conv1: str, dtype: torch.dtype,
                  channels_last: bool) -> torch.Tensor:
    """(B, C, I, J, K) uint8 -> ``offset + gain * u`` per volume, of ``dtype``, laid out for the conv1
    rewrite ``conv1``. Compiled on CUDA into one kernel (:func:`prepare`)."""
    view = (-1, 1, 1, 1, 1)
    return fastconv.arrange(torch.addcmul(offset.view(view), u8, gain.view(view)).to(dtype), conv1, channels_last)


@functools.cache
def _compiled_network_input():
    """:func:`network_input` compiled for the GPU; as is where Triton (inductor's GPU code generator) is missing."""
    if importlib.util.find_spec("triton") is None:
        return network_input
    return torch.compile(network_input, dynamic=False, fullgraph=True)


def prepare(batch_u8: torch.Tensor, device: torch.device, conv1: str = "none", augment: Augment | None = None,
            seed: int = 0, epoch: int = 0, index: Sequence[int] = ()) -> torch.Tensor:
    """uint8 batch (host or device) -> network input on ``device``: intensities u / SCALE (the cached
    preprocessed values), augmented when ``augment`` is given, laid out for the conv1 rewrite ``conv1``
    (:mod:`Training.fastconv`). On CUDA the input is bf16 (what autocast feeds conv1 anyway) in
    channels_last_3d, else float32.

    The batch is consumed: volumes drawn for a flip are flipped (along i) in place, as uint8. On CUDA,
    :func:`network_input` is then compiled (torch.compile, seconds, once) into a single kernel that
    reads the uint8 batch and writes the final layout. Written here rather than with MONAI's RandFlip,
    RandScaleIntensity and RandShiftIntensity, which work volume by volume in separate passes over float
    copies. Measured on an H200 at the paper's size (trainer vs bare model step): MONAI's transforms
    cost 9 % of a training step, an eager per-volume version of this pass 6 %, this compiled one 2 %.
    """
    cuda = device.type == "cuda"
    if augment is None:
        draws = [(False, 1.0, 0.0)] * batch_u8.shape[0]
    else:
        draws = [augment.draw(augment_seed(seed, epoch, i)) for i in index]
    u8 = batch_u8.to(device, non_blocking=True)
    for n, (flip, _, _) in enumerate(draws):
        if flip:
            u8[n] = u8[n].flip(1)
    factors = to_device(torch.tensor([[d[1] / SCALE for d in draws], [d[2] for d in draws]]), device)
    convert = _compiled_network_input() if cuda else network_input
    return convert(u8, factors[0], factors[1], conv1, torch.bfloat16 if cuda else torch.float32, cuda)


def run_forward(method: MethodConfig, cfg: ModelConfig, model: nn.Module, x: torch.Tensor, label: torch.Tensor,
                birads: torch.Tensor) -> tuple[torch.Tensor, Scores]:
    """:func:`Training.methods.forward` under bf16 autocast on CUDA."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        return forward(method, cfg, model, x, label.to(x.device), birads.to(x.device))


@torch.no_grad()
def predict(method: MethodConfig, cfg: ModelConfig, model: nn.Module, source: VolumeSource, batch_size: int,
            dist: Dist | None = None, conv1: str = "none") -> dict[str, np.ndarray]:
    """Probability, pre-sigmoid score, cos(theta) (NaN for non-angular methods), per-case loss and label of
    every case of ``source``, in its order; each rank predicts every world-th case and the results are gathered."""
    dist = dist or Dist()
    model.eval()
    mine = list(range(dist.rank, len(source), dist.world))
    out: dict[int, tuple[float, float, float, float]] = {}
    for idx, batch in source.batches([mine[n:n + batch_size] for n in range(0, len(mine), batch_size)]):
        x = prepare(batch, source.device, conv1)
        label, birads = source.labels[idx], source.birads[idx]
        for n, i in enumerate(idx):  # per-case loss: the loss of a batch of one (eval mode: no batch coupling)
            loss, scores = run_forward(method, cfg, model, x[n:n + 1], label[n:n + 1], birads[n:n + 1])
            cos = float(scores.cos_theta[0]) if scores.cos_theta is not None else math.nan
            out[i] = (float(scores.probability[0]), cos, float(loss), float(scores.score[0]))
    merged: dict[int, tuple[float, float, float, float]] = {}
    for part in gather_objects(out, dist):
        merged.update(part)
    order = sorted(merged)
    return {"probability": np.array([merged[i][0] for i in order]),
            "cos_theta": np.array([merged[i][1] for i in order]),
            "loss": np.array([merged[i][2] for i in order]),
            "score": np.array([merged[i][3] for i in order]),
            "label": source.labels.numpy()[order]}
