"""Inputs that are zero outside a box: the network's first convolution computed only where it sees data.

The network input is the masked subtractions, zero outside the breast mask; at the paper's size the box
around the mask's non-zero voxels was 47 % of the 340 x 220 x 128 input on a phantom. conv1 (7x7x7, 6 channels
in, 64 out) is 43 % of the forward pass on a CPU, and wherever its window holds only zeros its output is its
bias. :func:`conv_on_box` computes conv1 on the part of the input its windows need around the box and fills
the rest with the bias: the same output (bitwise on the CPU; tested), in about half the time. No library
offers this (a sparse convolution would need the whole network sparse), so it is written here.

A box is ((i0, i1), (j0, j1), (k0, k1)), inclusive voxel ranges of the spatial axes (I, J, K); i0 > i1
means an empty box (an all-zero input; conv1 then computes only the outputs at the volume's first corner).
Every input voxel is read by some conv1 window (kernel 7 >= stride 2), so the computed slab is never empty.
"""

from __future__ import annotations

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


def conv_on_box(conv: nn.Conv3d, x: torch.Tensor, box: Box) -> torch.Tensor:
    """``conv(x)`` for an input ``x`` (N, C, I, J, K) that is zero outside ``box``: the convolution runs on
    the slab of ``x`` that the output windows meeting the box read (zero-padded where they leave ``x``), and
    every other output voxel is the bias (0 without one). Output in ``x``'s memory format and the dtype the
    convolution gives (bf16 under bf16 autocast)."""
    if conv.dilation != (1, 1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("conv_on_box takes an undilated, ungrouped, zero-padded convolution")
    size = x.shape[2:]
    kernel, stride, pad = conv.kernel_size, conv.stride, conv.padding
    out_size = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, pad)]
    # output o reads input o * s - p .. o * s - p + k - 1: those meeting [lo, hi]
    first = [max(0, -(-(lo + p - k + 1) // s)) for (lo, _), k, s, p in zip(box, kernel, stride, pad)]
    last = [min(n - 1, (hi + p) // s) for (_, hi), n, s, p in zip(box, out_size, stride, pad)]
    reads = [(o0 * s - p, o1 * s - p + k - 1) for o0, o1, k, s, p in zip(first, last, kernel, stride, pad)]
    if np.prod([o1 - o0 + 1 for o0, o1 in zip(first, last)]) > WHOLE * np.prod(out_size):
        return conv(x)  # a box that fills most of the input: the plain convolution is faster
    slab = x[(slice(None), slice(None), *(slice(max(0, a), min(n, b + 1)) for (a, b), n in zip(reads, size)))]
    padding = [amount for (a, b), n in reversed(list(zip(reads, size)))
               for amount in (max(0, -a), max(0, b + 1 - n))]  # functional.pad lists the last axis first
    slab = functional.pad(slab, padding).contiguous(memory_format=torch.channels_last_3d)
    inner = functional.conv3d(slab, conv.weight, conv.bias, stride=stride)
    out = torch.empty((x.shape[0], conv.out_channels, *out_size), dtype=inner.dtype, device=x.device,
                      memory_format=torch.channels_last_3d)
    if conv.bias is None:
        out.zero_()
    else:  # the value the convolution gives on zeros: its bias, rounded as autocast rounds it
        out.copy_(conv.bias.to(inner.dtype).view(1, -1, 1, 1, 1).expand_as(out))
    out[(slice(None), slice(None), *(slice(o0, o1 + 1) for o0, o1 in zip(first, last)))] = inner
    return out
