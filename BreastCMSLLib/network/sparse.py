"""Inputs that are zero outside a box: the network's stem computed only where it sees data.

The network input is the masked subtractions, zero outside the breast mask; at the paper's size the box
around the mask's non-zero voxels was 47 % of the 340 x 220 x 128 input on a phantom. conv1 (7x7x7, 6 channels
in, 64 out) is 43 % of the forward pass on a CPU, and wherever its window holds only zeros its output is its
bias; the stem's ReLU and max pooling of such outputs give ReLU(bias). :func:`stem_on_box` computes conv1, ReLU
and the pooling on the part of the input and of conv1's output that the pooled outputs near the box need, and
fills the rest with ReLU(bias): the same output (to float rounding; tested), in about half the time of the whole
stem, and without conv1's full 64 x 170 x 110 x 64 output. No library offers this (a sparse convolution would
need the whole network sparse), so it is written here.

A box is ((i0, i1), (j0, j1), (k0, k1)), inclusive voxel ranges of the spatial axes (I, J, K); i0 > i1
means an empty box (an all-zero input; conv1 then computes only the outputs at the volume's first corner).
Every input voxel is read by some conv1 window (kernel 7 >= stride 2), so the computed slab is never empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
EMPTY: Box = ((0, -1), (0, -1), (0, -1))
# Above this fraction of the output, the plain convolution: oneDNN ran conv1 on the zero-padded slab of a whole
# 340 x 220 x 128 input 15 % slower than with its own padding.
WHOLE = 0.8


def nonzero_box(array: np.ndarray) -> Box:
    """The smallest box holding every non-zero voxel of a (C, I, J, K) array (any channel); :data:`EMPTY`
    when every voxel is zero."""
    occupied = (array != 0).any(axis=0)
    box = []
    for axis in range(3):
        hits = np.flatnonzero(occupied.any(axis=tuple(a for a in range(3) if a != axis)))
        if not hits.size:
            return EMPTY
        box.append((int(hits[0]), int(hits[-1])))
    return tuple(box)


def union_box(boxes: list[Box]) -> Box:
    """The smallest box holding every one of ``boxes`` (empty ones ignored); :data:`EMPTY` when all are."""
    full = [b for b in boxes if all(lo <= hi for lo, hi in b)]
    if not full:
        return EMPTY
    return tuple((min(b[a][0] for b in full), max(b[a][1] for b in full)) for a in range(3))


def _triple(value) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * 3


def stem_on_box(conv: nn.Conv3d, post: Callable[[torch.Tensor], torch.Tensor], pool: nn.MaxPool3d, x: torch.Tensor,
                box: Box) -> torch.Tensor:
    """``pool(post(conv(x)))`` for an input ``x`` (N, C, I, J, K) that is zero outside ``box``; ``post`` is
    elementwise per channel (the stem's BatchNorm and ReLU). Only the pooled outputs whose windows meet a
    convolution output that sees the box are computed: the convolution runs on the slab of ``x`` those outputs
    read (zero-padded where they leave ``x``), then ``post`` and the pooling (padded with -inf where the
    convolution's output ends, as the pooling pads). Every other pooled output pools nothing but the value the
    convolution gives on zeros, its bias (rounded as the convolution rounds it): ``post(bias)``. Output in
    ``x``'s memory format and the dtype the convolution gives (bf16 under bf16 autocast)."""
    if conv.dilation != (1, 1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("stem_on_box takes an undilated, ungrouped, zero-padded convolution")
    if _triple(pool.dilation) != (1, 1, 1) or pool.ceil_mode:
        raise ValueError("stem_on_box takes an undilated max pooling without ceil_mode")
    size = x.shape[2:]
    kernel, stride, pad = conv.kernel_size, conv.stride, conv.padding
    pk, ps, pp = _triple(pool.kernel_size), _triple(pool.stride), _triple(pool.padding)
    out_size = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, pad)]
    pooled_size = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(out_size, pk, ps, pp)]
    # convolution output o reads input o * s - p .. o * s - p + k - 1: those meeting [lo, hi]
    first = [max(0, -(-(lo + p - k + 1) // s)) for (lo, _), k, s, p in zip(box, kernel, stride, pad)]
    last = [min(n - 1, (hi + p) // s) for (_, hi), n, s, p in zip(box, out_size, stride, pad)]
    # pooled output q reads convolution outputs q * s - p .. q * s - p + k - 1: those meeting [first, last]
    q0 = [max(0, -(-(f + p - k + 1) // s)) for f, k, s, p in zip(first, pk, ps, pp)]
    q1 = [min(n - 1, (b + p) // s) for b, n, s, p in zip(last, pooled_size, ps, pp)]
    window = [(a * s - p, b * s - p + k - 1) for a, b, k, s, p in zip(q0, q1, pk, ps, pp)]
    o0 = [max(0, a) for a, _ in window]
    o1 = [min(n - 1, b) for (_, b), n in zip(window, out_size)]
    if np.prod([b - a + 1 for a, b in zip(o0, o1)]) > WHOLE * np.prod(out_size):
        return pool(post(conv(x)))  # a box that fills most of the input: the plain stem is faster
    reads = [(a * s - p, b * s - p + k - 1) for a, b, k, s, p in zip(o0, o1, kernel, stride, pad)]
    slab = x[(slice(None), slice(None), *(slice(max(0, a), min(n, b + 1)) for (a, b), n in zip(reads, size)))]
    padding = [amount for (a, b), n in reversed(list(zip(reads, size)))
               for amount in (max(0, -a), max(0, b + 1 - n))]  # functional.pad lists the last axis first
    slab = functional.pad(slab, padding).contiguous(memory_format=torch.channels_last_3d)
    stem = post(functional.conv3d(slab, conv.weight, conv.bias, stride=stride))
    # where the windows leave the convolution's output, the pooling's own padding: the pooling pads an axis whose
    # slab starts at the output's start (and then its end too, where it gives at most surplus outputs); an axis
    # whose slab only ends there (an odd output size) is padded here, a copy of the stem
    lower = [a < 0 for a, _ in window]
    edges = [amount for (a, b), n, low in reversed(list(zip(window, out_size, lower)))
             for amount in (0, 0 if low else max(0, b + 1 - n))]
    if any(edges):
        stem = functional.pad(stem, edges, value=-math.inf)
    with torch.autocast(x.device.type, enabled=False):  # the pooling in the stem's dtype, as MaxPool3d runs it
        pooled = functional.max_pool3d(stem, pk, ps, [p if low else 0 for p, low in zip(pp, lower)])
    pooled = pooled[(slice(None), slice(None), *(slice(0, b - a + 1) for a, b in zip(q0, q1)))]
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=x.device)
    out = torch.empty((x.shape[0], conv.out_channels, *pooled_size), dtype=stem.dtype, device=x.device,
                      memory_format=torch.channels_last_3d)
    out.copy_(post(bias.to(stem.dtype).view(1, -1, 1, 1, 1).clone()).expand_as(out))
    out[(slice(None), slice(None), *(slice(a, b + 1) for a, b in zip(q0, q1)))] = pooled
    return out
